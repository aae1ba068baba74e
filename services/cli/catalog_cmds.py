"""`harness models|tools|policies ...`: the model and tool catalogs and the casbin policy."""

from __future__ import annotations

import argparse
import asyncio

from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb

from services.cli import output
from services.cli.base import Ctx, UsageError, short
from services.cli.delete_cmds import catalog_deletes
from services.cli.secret_cmds import read_secret
from services.common.access import policy_subject
from services.common.errors import HarnessError
from services.common.mcp_client import (
    DEFAULT_CREDENTIAL_HEADER,
    SCHEMES,
    catalog_actions,
    is_mcp_endpoint,
    list_tools,
)

# --- models and tools -----------------------------------------------------------------------


def models_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.list_all("ListModels", pb.ListModelsRequest(), "models")

    def human(r) -> None:
        rows = [
            [
                m.name,
                m.triton_model,
                m.family,
                f"{m.parameters_b:g}B",
                m.quantization,
                f"{m.memory_gib:g}",
                m.context_length,
                short(pb.ModelKind, m.kind) or "generation",
                m.dimensions or "",
            ]
            for m in r.models
        ]
        header = ("NAME", "TRITON MODEL", "FAMILY", "PARAMS", "QUANT", "MEM GIB", "CONTEXT", "KIND", "DIMS")
        output.table(header, rows)

    return ctx.emit(resp, human)


def models_register(ctx: Ctx, args: argparse.Namespace) -> int:
    model = pb.Model(
        name=args.name,
        triton_model=args.triton_model or args.name,
        family=args.family or "",
        parameters_b=args.parameters_b,
        quantization=args.quantization or "",
        memory_gib=args.memory_gib,
        context_length=args.context_length,
        kind=pb.ModelKind.Value(f"MODEL_KIND_{args.kind.upper()}"),
        dimensions=args.dimensions,
    )
    resp = ctx.call("RegisterModel", pb.RegisterModelRequest(model=model))
    return ctx.emit(resp, lambda r: print(f"registered model {r.model.name} -> {r.model.triton_model}"))


def _action_text(a: pb.ToolAction) -> str:
    flags = [short(common_pb2.RiskClass, a.risk) or "?"]
    if a.idempotent:
        flags.append("idempotent")
    if a.cache_ttl_s:
        flags.append(f"ttl={a.cache_ttl_s}s")
    if a.requires_approval:
        flags.append("approval")
    return f"{a.name}({','.join(flags)})"


def tools_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.list_all("ListTools", pb.ListToolsRequest(), "tools")

    def human(r) -> None:
        rows = [[t.name, t.version, t.endpoint, " ".join(map(_action_text, t.actions))] for t in r.tools]
        output.table(("NAME", "VERSION", "ENDPOINT", "ACTIONS"), rows)

    return ctx.emit(resp, human)


def tools_show(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.list_all("ListTools", pb.ListToolsRequest(), "tools")
    found = [t for t in resp.tools if t.name == args.name and args.version in ("", t.version)]
    if not found:
        at = f" version {args.version!r}" if args.version else ""
        raise UsageError(f"no tool {args.name!r}{at} in the catalog; `harness tools list` lists them")
    shown = pb.ListToolsResponse(tools=found)

    def human(r) -> None:
        for t in r.tools:
            kind = "MCP server" if is_mcp_endpoint(t.endpoint) else "HTTP JSON"
            print(f"{t.name}@{t.version}  {kind} at {t.endpoint}")
            if t.description:
                print(f"  {t.description}")
            if t.credential:
                print(
                    f"  credential: secret {t.credential} in {t.credential_header or DEFAULT_CREDENTIAL_HEADER}"
                )
            for a in t.actions:
                print(f"  {_action_text(a)}{'  ' + a.description if a.description else ''}")
                if a.input_schema:
                    print(f"    arguments: {a.input_schema}")

    return ctx.emit(shown, human)


def _overrides(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} takes ACTION=VALUE, got {pair!r}")
        out[name] = value
    return out


def tools_import_mcp(ctx: Ctx, args: argparse.Namespace) -> int:
    """Registers an MCP server's tools as the actions of one catalog tool (read-only ones `read`,
    the rest `write` with approval, unless --risk / --no-approval say otherwise)."""
    endpoint = args.url if is_mcp_endpoint(args.url) else f"mcp+{args.url}"
    if not endpoint.startswith(SCHEMES):
        raise UsageError(f"{args.url!r} is not an MCP server URL: use http(s)://host/mcp")
    risks = _overrides(args.risk or [], "--risk")
    if args.credential_file and not args.credential:
        raise UsageError("--credential-file needs --credential NAME (the secret it is stored as)")
    headers = {}
    if args.credential_file:  # the server wants it to list its tools too; stored for the routers
        value = read_secret(args.credential_file)
        ctx.call("SetSecret", pb.SetSecretRequest(name=args.credential, value=value))
        headers = {args.credential_header or DEFAULT_CREDENTIAL_HEADER: value}
    try:
        listed = asyncio.run(list_tools(endpoint, timeout_s=ctx.conn.timeout_s, headers=headers))
    except HarnessError as exc:
        raise UsageError(exc.message) from exc
    actions = catalog_actions(listed)
    names = {a.name for a in actions}
    unknown = sorted((set(risks) | set(args.no_approval or [])) - names)
    if unknown:
        raise UsageError(f"the server has no tools {unknown}; it has {sorted(names)}")
    for action in actions:
        if action.name in risks:
            action.risk = _risk(risks[action.name])
        if action.name in (args.no_approval or []):
            action.requires_approval = False
    tool = pb.Tool(
        name=args.name, version=args.version, endpoint=endpoint, description=args.description or "",
        credential=args.credential or "", credential_header=args.credential_header or "",
    )  # fmt: skip
    tool.actions.extend(actions)
    resp = ctx.call("RegisterTool", pb.RegisterToolRequest(tool=tool))

    def human(r) -> None:
        print(f"imported {len(r.tool.actions)} actions from {endpoint} as {r.tool.name}@{r.tool.version}:")
        for a in r.tool.actions:
            print(f"  {_action_text(a)}")

    return ctx.emit(resp, human)


def _risk(value: str) -> int:
    try:
        return common_pb2.RiskClass.Value(f"RISK_CLASS_{value.upper()}")
    except ValueError:
        raise UsageError(f"risk must be read, write or delete, got {value!r}") from None


# --- policies -------------------------------------------------------------------------------


def policy_rule(ptype: str, values: list[str]) -> pb.PolicyRule:
    """The registry validates the values; the CLI checks the rule kind and the count, and writes
    the subject as the registry stores it (a bare name is `user:<name>`).

    A role assignment is accepted in casbin's order (g USER ROLE DOMAIN) and in the order
    `policies list` prints it (g USER DOMAIN ROLE): the role is the value named `role:...`."""
    if ptype not in ("p", "g"):
        raise UsageError(f"rule kind must be p (policy) or g (role assignment), got {ptype!r}")
    counts = (4, 5) if ptype == "p" else (3,)
    if len(values) not in counts:
        shape = "SUBJECT DOMAIN OBJECT ACTION [allow|deny]" if ptype == "p" else "SUBJECT ROLE DOMAIN"
        raise UsageError(f"a {ptype!r} rule is: {ptype} {shape} (got {len(values)} values)")
    if ptype == "g" and values[2].startswith("role:") and not values[1].startswith("role:"):
        values = [values[0], values[2], values[1]]
    return pb.PolicyRule(ptype=ptype, values=[_subject(values[0]), *values[1:]])


def _subject(value: str) -> str:
    try:
        return policy_subject(value) if value else value
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def rule_csv(rule: pb.PolicyRule) -> str:
    return ", ".join([rule.ptype, *rule.values])


def policies_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("ListPolicies", pb.ListPoliciesRequest(domain=args.domain or ""))

    def human(r) -> None:
        rows = []
        for rule in r.rules:
            v = list(rule.values)
            if rule.ptype == "g":  # user, role, domain
                rows.append(["g", v[0], v[2] if len(v) > 2 else "", v[1] if len(v) > 1 else "", "", ""])
            else:  # sub, dom, obj, act, eft
                rows.append(["p", *(v + [""] * 5)[:5]])
        output.table(("KIND", "SUBJECT", "DOMAIN", "OBJECT/ROLE", "ACTION", "EFFECT"), rows)

    return ctx.emit(resp, human)


def policies_add(ctx: Ctx, args: argparse.Namespace) -> int:
    rule = policy_rule(args.ptype, args.values)
    resp = ctx.call("AddPolicy", pb.AddPolicyRequest(rule=rule))
    return ctx.emit(resp, lambda r: print(("added: " if r.added else "already present: ") + rule_csv(rule)))


def policies_remove(ctx: Ctx, args: argparse.Namespace) -> int:
    rule = policy_rule(args.ptype, args.values)
    resp = ctx.call("RemovePolicy", pb.RemovePolicyRequest(rule=rule))
    return ctx.emit(resp, lambda r: print(("removed: " if r.removed else "not present: ") + rule_csv(rule)))


def policies_check(ctx: Ctx, args: argparse.Namespace) -> int:
    subject = _subject(args.subject)
    req = pb.CheckAccessRequest(subject=subject, domain=args.domain, object=args.object, action=args.action)
    resp = ctx.call("CheckAccess", req)

    def human(r) -> None:
        verdict = "allowed" if r.allowed else "denied"
        print(f"{verdict}: {subject} {args.action} {args.object} in {args.domain}")
        print(f"rule: {r.rule or '(none matched: default deny)'}")

    ctx.emit(resp, human)
    return 0 if resp.allowed or not args.exit_code else 3


# --- parser ---------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", help="model catalog: list, register, delete")
    t = models.add_subparsers(dest="verb", required=True, metavar="ACTION")
    t.add_parser("list", parents=[common], help="list catalog models").set_defaults(handler=models_list)
    p = t.add_parser("register", parents=[common], help="add a model to the catalog")
    p.add_argument("name")
    p.add_argument("--triton-model", help="Triton model name (default: the catalog name)")
    p.add_argument("--family")
    p.add_argument("--parameters-b", type=float, default=0.0, help="parameter count, billions")
    p.add_argument("--quantization", help="fp16, fp8, awq-int4, ...")
    p.add_argument("--memory-gib", type=float, default=0.0, help="GPU memory per replica")
    p.add_argument("--context-length", type=int, default=0, help="tokens (of each input, for embedding)")
    p.add_argument("--kind", choices=("generation", "embedding"), default="generation")
    p.add_argument("--dimensions", type=int, default=0, help="an embedding model's vector length")
    p.set_defaults(handler=models_register)

    models_actions = t
    tools = sub.add_parser("tools", help="tool catalog: list, show, import-mcp, delete")
    t = tools.add_subparsers(dest="verb", required=True, metavar="ACTION")
    t.add_parser("list", parents=[common], help="list catalog tools").set_defaults(handler=tools_list)
    p = t.add_parser("show", parents=[common], help="one tool's versions and actions")
    p.add_argument("name")
    p.add_argument("--version", default="", help="only this version")
    p.set_defaults(handler=tools_show)
    p = t.add_parser(
        "import-mcp", parents=[common], help="register an MCP server's tools as a tool's actions"
    )
    p.add_argument("url", help="the server's streamable HTTP URL, e.g. https://ledger.internal/mcp")
    p.add_argument("--name", required=True, help="catalog name of the tool")
    p.add_argument("--version", default="1")
    p.add_argument("--description")
    p.add_argument(
        "--risk", action="append", metavar="ACTION=CLASS", help="read, write or delete (repeatable)"
    )
    p.add_argument("--no-approval", action="append", metavar="ACTION", help="no human approval (repeatable)")
    p.add_argument(
        "--credential",
        metavar="SECRET",
        help="the secret (`harness secrets set`) the routers send the server",
    )
    p.add_argument(
        "--credential-file", metavar="PATH",
        help="store PATH's content as that secret first (and list the server's tools with it)",
    )  # fmt: skip
    p.add_argument(
        "--credential-header", metavar="NAME", help="header that carries it (default authorization)"
    )
    p.set_defaults(handler=tools_import_mcp)
    catalog_deletes({"models": models_actions, "tools": t}, common)

    policies = sub.add_parser("policies", help="casbin policy: list, add, remove, check")
    t = policies.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = t.add_parser("list", parents=[common], help="rules and role assignments")
    p.add_argument("--domain", help="only this project")
    p.set_defaults(handler=policies_list)
    for name, handler, verb in (("add", policies_add, "add"), ("remove", policies_remove, "remove")):
        p = t.add_parser(
            name,
            parents=[common],
            help=f"{verb} a rule: p SUBJECT DOMAIN OBJECT ACTION [allow|deny] | g SUBJECT ROLE DOMAIN "
            "(SUBJECT: user:<name> (a bare name is a user), role:<name> or agent:<name>)",
        )
        p.add_argument("ptype", metavar="p|g")
        p.add_argument("values", nargs="+", metavar="VALUE")
        p.set_defaults(handler=handler)
    p = t.add_parser("check", parents=[common], help="may SUBJECT do ACTION on OBJECT in DOMAIN?")
    p.add_argument("subject", help="user:<name> (a bare name is a user), agent:<name> or role:<name>")
    p.add_argument("domain", help="project")
    p.add_argument("object", help="agent:<name>, model:<name>, tool:<name>")
    p.add_argument("action", help="invoke, read, write, delete")
    p.add_argument("--exit-code", action="store_true", help="exit 3 when denied (for scripts)")
    p.set_defaults(handler=policies_check)
