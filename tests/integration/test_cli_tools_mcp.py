"""`harness tools import-mcp|show|list` against a real registry and a real MCP server (built with
the `mcp` SDK): the server's tools become the actions of one catalog tool."""

from __future__ import annotations

import json

import pytest_asyncio

from tests.helpers.mcp_ledger import McpLedger
from tests.integration import test_cli_registry as cli_fixtures

# The CLI tests' fixtures: a real registry on port 0, a harness root, the CLI in a thread.
registry, root, cli = cli_fixtures.registry, cli_fixtures.root, cli_fixtures.cli


@pytest_asyncio.fixture
async def ledger_server():
    server = await McpLedger().start()
    yield server
    await server.stop()


async def test_import_mcp_registers_the_servers_tools_with_safe_risk_defaults(cli, ledger_server):
    url = ledger_server.endpoint.removeprefix("mcp+")
    res = await cli("tools", "import-mcp", url, "--name", "books", "--risk", "ledger.delete=delete",
                    "--description", "The finance ledger")  # fmt: skip
    assert res.rc == 0, res.err
    assert f"imported 3 actions from {ledger_server.endpoint} as books@1" in res.out
    shown = (await cli("tools", "show", "books", "--json")).json()["tools"]
    [tool] = shown
    assert tool["endpoint"] == ledger_server.endpoint and tool["description"] == "The finance ledger"
    actions = {a["name"]: a for a in tool["actions"]}
    assert (
        actions["ledger.read"]["risk"] == "RISK_CLASS_READ"
        and not actions["ledger.read"]["requires_approval"]
    )
    assert (
        actions["ledger.delete"]["risk"] == "RISK_CLASS_DELETE"
        and actions["ledger.delete"]["requires_approval"]
    )
    assert (
        actions["ledger.hang"]["risk"] == "RISK_CLASS_WRITE" and actions["ledger.hang"]["requires_approval"]
    )
    human = (await cli("tools", "show", "books")).out
    assert f"books@1  MCP server at {ledger_server.endpoint}" in human
    assert "ledger.delete(delete,approval)" in human
    assert "books" in (await cli("tools", "list")).out


async def test_import_mcp_bad_input_is_refused_with_a_clear_message(cli, ledger_server):
    url = ledger_server.endpoint.removeprefix("mcp+")
    res = await cli("tools", "import-mcp", url, "--name", "books", "--no-approval", "ledger.erase")
    assert res.rc != 0 and "no tools ['ledger.erase']" in res.err
    res = await cli("tools", "import-mcp", url, "--name", "books", "--risk", "ledger.read=maybe")
    assert res.rc != 0 and "risk must be read, write or delete" in res.err
    res = await cli("tools", "import-mcp", "ftp://x/mcp", "--name", "books")
    assert res.rc != 0 and "not an MCP server URL" in res.err
    res = await cli("tools", "import-mcp", "http://127.0.0.1:1/mcp", "--name", "books", "--timeout", "3")
    assert res.rc != 0 and "the MCP server at http://127.0.0.1:1/mcp" in res.err
    res = await cli("tools", "show", "books")
    assert res.rc != 0 and "no tool 'books'" in res.err


async def test_a_server_that_needs_a_credential_is_imported_with_it_and_no_read_returns_the_value(
    cli, tmp_path
):
    token = "upstream-t0ken-value"
    server = await McpLedger(token=token).start()
    try:
        url = server.endpoint.removeprefix("mcp+")
        secret_file = tmp_path / "books-token"
        secret_file.write_text(f"Bearer {token}\n")
        res = await cli("tools", "import-mcp", url, "--name", "books", "--credential", "books-token")
        assert res.rc != 0 and "401" in res.err  # listing needs the credential too
        res = await cli("tools", "import-mcp", url, "--name", "books", "--credential", "books-token",
                        "--credential-file", str(secret_file))  # fmt: skip
        assert res.rc == 0, res.err
        [tool] = (await cli("tools", "show", "books", "--json")).json()["tools"]
        assert tool["credential"] == "books-token"
        read = next(a for a in tool["actions"] if a["name"] == "ledger.read")
        assert json.loads(read["input_schema"])["required"] == ["ledger"]
        assert "credential: secret books-token in authorization" in (await cli("tools", "show", "books")).out
        listed = await cli("secrets", "list")
        assert "books-token" in listed.out and "alice" in listed.out
        for res in (listed, await cli("secrets", "list", "--json"), await cli("tools", "list", "--json")):
            assert token not in res.out
        res = await cli("secrets", "delete", "books-token")
        assert res.rc != 0 and "credential of tools ['books@1']" in res.err
        res = await cli("tools", "import-mcp", url, "--name", "other", "--credential", "nope")
        assert res.rc != 0
    finally:
        await server.stop()


async def test_secrets_and_schemas_refuse_bad_input(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    res = await cli("secrets", "set", "t", "--from-file", str(empty))
    assert res.rc != 0 and "holds no secret" in res.err
    multi = tmp_path / "multi"
    multi.write_text("a\nb")
    res = await cli("secrets", "set", "t", "--from-file", str(multi))
    assert res.rc != 0 and "printable ASCII" in res.err
    res = await cli("secrets", "set", "Bad_Name", "--from-file", str(multi))
    assert res.rc != 0 and "secret name 'Bad_Name' is invalid" in res.err
    res = await cli("secrets", "set", "t", "--from-file", str(multi), user="bob")
    assert res.rc != 0 and "needs the admin role" in res.err
