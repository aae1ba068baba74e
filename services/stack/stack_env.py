"""What `harness up` writes to .harness/env: every address, certificate and token a user, the
CLI and ops tools need, as `export` lines after one that puts the virtualenv first on PATH."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.identity import mint_jwt
from services.stack import demo_tools
from services.stack.layout import service_addresses

if TYPE_CHECKING:
    from services.stack.up import Stack


def stack_env(stack: Stack) -> dict[str, str]:
    """The variables of a started stack (also mints the demo users' tokens under tokens/)."""
    assert stack.certs is not None
    users = [u["name"] for u in stack.demo.get("registry", {}).get("users", [])]
    private = stack.certs.jwt_private_key.read_bytes()  # type: ignore[union-attr]
    tokens_dir = stack.paths.root / "tokens"
    tokens_dir.mkdir(exist_ok=True)
    for user in users:
        roles = next(
            (tuple(u.get("roles", ())) for u in stack.demo["registry"]["users"] if u["name"] == user), ()
        )
        (tokens_dir / f"{user}.jwt").write_text(mint_jwt(private, user, roles=roles))
    agent = next(iter(stack.certs.agents))
    leaf = stack.certs.agents[agent]
    env = {
        "HARNESS_ADDR": f"localhost:{stack.cfg.ports.envoy}",
        # The OpenAI-compatible API, through the same Envoy listener (same certificate).
        "HARNESS_OPENAI_BASE_URL": f"https://localhost:{stack.cfg.ports.envoy}/v1",
        # The MCP endpoint (streamable HTTP), same listener: the agent's governed tools.
        "HARNESS_MCP_URL": f"https://localhost:{stack.cfg.ports.envoy}/mcp",
        # The same APIs for agents without a client certificate: an agent-bound API key (TLS only).
        "HARNESS_OPENAI_KEY_BASE_URL": f"https://localhost:{stack.cfg.ports.envoy_keys}/v1",
        "HARNESS_CA": str(stack.certs.ca_cert.resolve()),
        "HARNESS_CERT": str(leaf.cert.resolve()),
        "HARNESS_KEY": str(leaf.key.resolve()),
        "HARNESS_AGENT": agent,
        "HARNESS_TOKEN": (tokens_dir / f"{stack.cfg.demo_user}.jwt").read_text(),
        "HARNESS_ENVOY_ADMIN": f"http://127.0.0.1:{stack.cfg.ports.envoy_admin}",
        # The registry directly, with the ops certificate (acts as admin): `harness agents ...`.
        "HARNESS_REGISTRY_ADDR": f"127.0.0.1:{stack.cfg.ports.registry}",
        "HARNESS_OPS_CERT": str(stack.certs.services["cli"].cert.resolve()),
        "HARNESS_OPS_KEY": str(stack.certs.services["cli"].key.resolve()),
        # The simulators, directly (plain gRPC, Triton's protocol), for ops and benchmarks.
        # Engines (simulators and --triton servers), directly (plain gRPC, Triton's protocol).
        "HARNESS_TRITON_ADDRS": ",".join(
            [*(s.address for s in stack.sims if not s.openai), *(t.address for t in stack.cfg.tritons)]
        ),
        "HARNESS_TRITON_METRICS": ",".join(
            [
                *(s.metrics_url for s in stack.sims if not s.openai),
                *(t.metrics_url for t in stack.cfg.tritons if t.metrics_url),
            ]
        ),
        # Every service directly (mTLS with the ops certificate), for ops tools and the CLI.
        **service_addresses(stack.cfg.ports),
        # The demo's ledger tool (agents reach it only through the router's InvokeTool).
        "HARNESS_LEDGER_URL": demo_tools.ledger_url(stack.cfg.ports.demo_ledger),
    }
    p = stack.cfg.ports  # for `harness top`
    env["HARNESS_ROUTER_METRICS"] = ",".join(f"http://127.0.0.1:{port}/metrics" for port in p.router_metrics)
    env["HARNESS_COST_METRICS"] = f"http://127.0.0.1:{p.cost_metrics}/metrics"
    if stack.cfg.prometheus:
        env["HARNESS_PROMETHEUS_URL"] = stack.prometheus_url
    return env


def env_file_text(env: dict[str, str]) -> str:
    """`export NAME='value'` lines, after one that puts the virtualenv's `harness`, `grpcurl` and
    `envoy` first on PATH, so every command the README and the banner print runs as printed."""
    venv_bin = shlex.quote(str(Path(sys.executable).parent))
    return f'export PATH={venv_bin}:"$PATH"\n' + "".join(f"export {k}='{v}'\n" for k, v in env.items())
