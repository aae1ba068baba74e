"""Seed a running Harness (compose or Kubernetes) the way `harness up` seeds the local stack.

What a stack started by Docker Compose or Kubernetes lacks after its services are up: the demo
data (teams, users, agents, models, tools, prices, budgets) in the registry and cost services, the
JWT settings every service follows, and a token for each demo user. This command waits until the
registry and the cost service answer SERVING, applies the demo YAML as the ops identity (the
`cli` service certificate, which the services treat as an admin), sets the JWT settings from
the public key, and mints one token per user with the private key into --tokens-dir.

    python -m services.devtools.seed_stack --registry registry:50052 --cost cost:50055 \\
        --demo compose/demo.yaml --tls-cert cli.pem --tls-key cli.key --tls-ca ca.pem \\
        --jwt-private-key jwt-signing.key --jwt-public-key jwt-signing.pub --tokens-dir tokens/
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness.cost.v1 import cost_pb2_grpc
from harness.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.config import TlsFiles
from services.common.identity import mint_jwt
from services.common.server import open_channel


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.devtools.seed_stack", description=__doc__.split("\n")[0]
    )
    p.add_argument("--registry", required=True, help="registry host:port")
    p.add_argument("--cost", required=True, help="cost service host:port")
    p.add_argument("--demo", type=Path, required=True, help="demo YAML (compose/demo.yaml's format)")
    p.add_argument("--tls-cert", required=True, help="the ops (cli) certificate")
    p.add_argument("--tls-key", required=True)
    p.add_argument("--tls-ca", required=True)
    p.add_argument(
        "--jwt-public-key", type=Path, required=True, help="RSA public key (PEM) tokens verify with"
    )
    p.add_argument("--jwt-private-key", type=Path, help="RSA private key (PEM): mint demo user tokens")
    p.add_argument("--jwt-issuer", default="harness")
    p.add_argument("--jwt-audience", default="harness")
    p.add_argument("--tokens-dir", type=Path, help="write <user>.jwt here (needs --jwt-private-key)")
    p.add_argument("--token-ttl", type=int, default=7 * 24 * 3600, help="seconds a minted token lives")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the services")
    return p


async def _serving(channel: grpc.aio.Channel, what: str, deadline: float) -> None:
    last = "not tried"
    while time.monotonic() < deadline:
        try:
            resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.aio.AioRpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        await asyncio.sleep(1.0)
    raise SystemExit(f"seed: {what} is not SERVING ({last}); is it running and reachable?")


async def seed(args: argparse.Namespace) -> dict[str, object]:
    from services.cost.seed import seed_cost
    from services.registry.seed import seed_registry

    demo = yaml.safe_load(args.demo.read_text()) or {}
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    deadline = time.monotonic() + args.timeout
    registry_ch, cost_ch = open_channel(args.registry, tls), open_channel(args.cost, tls)
    try:
        await _serving(registry_ch, f"the registry at {args.registry}", deadline)
        await _serving(cost_ch, f"the cost service at {args.cost}", deadline)
        report = await seed_registry(registry_pb2_grpc.RegistryStub(registry_ch), demo, ())
        settings = registry_pb2.JwtSettings(
            issuer=args.jwt_issuer, audience=args.jwt_audience, public_key_pem=args.jwt_public_key.read_text()
        )
        await registry_pb2_grpc.RegistryStub(registry_ch).SetJwtSettings(
            registry_pb2.SetJwtSettingsRequest(settings=settings), timeout=10
        )
        costs = await seed_cost(cost_pb2_grpc.CostStub(cost_ch), demo, ())
    finally:
        await registry_ch.close()
        await cost_ch.close()
    return {"registry": report, "cost": costs}


def write_tokens(args: argparse.Namespace, demo: dict) -> list[Path]:
    """One JWT per demo user (with the user's roles), readable by its owner only."""
    private = args.jwt_private_key.read_bytes()
    args.tokens_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for user in demo.get("registry", {}).get("users", []):
        token = mint_jwt(
            private,
            user["name"],
            roles=tuple(user.get("roles", ())),
            issuer=args.jwt_issuer,
            audience=args.jwt_audience,
            ttl_s=args.token_ttl,
        )
        path = args.tokens_dir / f"{user['name']}.jwt"
        path.touch(mode=0o600)
        path.write_text(token)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tokens_dir and not args.jwt_private_key:
        parser.error("--tokens-dir needs --jwt-private-key")
    if not args.demo.is_file():
        parser.error(f"--demo {args.demo}: no such file")
    result = asyncio.run(seed(args))
    print(f"seeded: registry {result['registry']}, cost {result['cost']}", flush=True)
    if args.tokens_dir:
        demo = yaml.safe_load(args.demo.read_text()) or {}
        for path in write_tokens(args, demo):
            print(f"token: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
