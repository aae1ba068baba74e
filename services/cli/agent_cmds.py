"""`harness agents|versions|traffic ...`: agents, their versions, lifecycle and canary splits."""

from __future__ import annotations

import argparse
import json

from google.protobuf import struct_pb2
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb

from services.cli import output
from services.cli.base import AGENT_STATE, AGENT_TYPE, SLO_CLASS, Ctx, UsageError, enum_arg, key_value, short
from services.cli.delete_cmds import agent_deletes

MASK_MODE = enum_arg(pb.MaskMode)


def traffic_text(agent: pb.Agent) -> str:
    return " ".join(f"{w.version}={w.weight}" for w in agent.traffic)


def _agent_rows(agents) -> list[list[object]]:
    return [
        [
            a.name,
            short(common_pb2.AgentType, a.type),
            a.project,
            short(common_pb2.AgentState, a.state),
            short(common_pb2.SloClass, a.slo.slo_class),
            ",".join(v.version for v in a.versions),
            traffic_text(a),
        ]
        for a in agents
    ]


def print_agents(agents) -> None:
    headers = ("NAME", "TYPE", "PROJECT", "STATE", "SLO", "VERSIONS", "TRAFFIC")
    output.table(headers, _agent_rows(agents))


def print_agent(agent: pb.Agent) -> None:
    slo = agent.slo
    targets = f"ttft {slo.ttft_ms:g} ms, tbt {slo.tbt_ms:g} ms, e2e {slo.e2e_ms:g} ms"
    pii = ", ".join(f"{p.kind}:{short(pb.MaskMode, p.mode) or 'mask'}" for p in agent.data_policy.pii)
    output.fields(
        [
            ("name", agent.name),
            ("spiffe id", agent.spiffe_id),
            ("type", short(common_pb2.AgentType, agent.type)),
            ("project", agent.project),
            ("state", short(common_pb2.AgentState, agent.state)),
            ("slo", f"{short(common_pb2.SloClass, slo.slo_class) or '-'} ({targets})"),
            ("pii", pii or "-"),
            ("limits", f"rpm {agent.rpm_limit or 'unlimited'}, tpm {agent.tpm_limit or 'unlimited'}"),
            ("traffic", traffic_text(agent) or "-"),
            (
                "api key auth",
                "on (agent-bound keys stand in for its certificate)" if agent.api_key_auth else "off",
            ),
            ("revision", agent.revision),
            ("description", agent.description),
        ]
    )
    if agent.versions:
        print()
        output.table(
            ("VERSION", "MODELS", "TOOLS", "CREATED"),
            [
                [v.version, ",".join(v.models), ",".join(v.tools), output.when(v.create_time)]
                for v in agent.versions
            ],
        )


# --- agents ---------------------------------------------------------------------------------


def agents_list(ctx: Ctx, args: argparse.Namespace) -> int:
    req = pb.ListAgentsRequest(project=args.project or "", type=args.type or 0, state=args.state or 0)
    resp = ctx.list_all("ListAgents", req, "agents")
    return ctx.emit(resp, lambda r: print_agents(r.agents))


def agents_get(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("GetAgent", pb.GetAgentRequest(name=args.name))
    return ctx.emit(resp, lambda r: print_agent(r.agent))


def parse_pii(items: list[str]) -> list[pb.PiiRule]:
    rules = []
    for item in items:
        kind, _, mode = item.partition("=")
        if not kind:
            raise UsageError(f"--pii must look like KIND[=mask|hash|drop], got {item!r}")
        try:
            rules.append(pb.PiiRule(kind=kind, mode=MASK_MODE(mode) if mode else 0))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--pii {item}: mask mode {exc}") from None
    return rules


def build_agent(args: argparse.Namespace) -> pb.Agent:
    return pb.Agent(
        name=args.name,
        spiffe_id=args.spiffe_id or "",
        type=args.type or 0,
        project=args.project,
        description=args.description or "",
        slo=pb.SloTargets(
            slo_class=args.slo_class or 0, ttft_ms=args.ttft_ms, tbt_ms=args.tbt_ms, e2e_ms=args.e2e_ms
        ),
        data_policy=pb.DataPolicy(pii=parse_pii(args.pii)),
        rpm_limit=args.rpm,
        tpm_limit=args.tpm,
    )


def agents_create(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("CreateAgent", pb.CreateAgentRequest(agent=build_agent(args)))
    return ctx.emit(resp, lambda r: print_agent(r.agent))


def agents_state(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("SetAgentState", pb.SetAgentStateRequest(agent=args.name, state=args.state))

    def human(r) -> None:
        print(f"{r.agent.name}: {short(common_pb2.AgentState, r.agent.state)}")

    return ctx.emit(resp, human)


def agents_api_key_auth(ctx: Ctx, args: argparse.Namespace) -> int:
    req = pb.SetAgentApiKeyAuthRequest(agent=args.name, enabled=args.switch == "on")
    resp = ctx.call("SetAgentApiKeyAuth", req)

    def human(r) -> None:
        state = "accepts" if r.agent.api_key_auth else "does not accept"
        print(f"{r.agent.name} {state} agent-bound API keys in place of its certificate")

    return ctx.emit(resp, human)


# --- versions -------------------------------------------------------------------------------


def parse_metadata(items: list[str]) -> struct_pb2.Struct:
    """`key=value` pairs; a value that parses as JSON (number, bool, list...) keeps its type."""
    meta = struct_pb2.Struct()
    for item in items:
        name, value = key_value(item, "--meta")
        try:
            meta.update({name: json.loads(value)})
        except ValueError:
            meta.update({name: value})
    return meta


def versions_create(ctx: Ctx, args: argparse.Namespace) -> int:
    version = pb.AgentVersion(
        version=args.version, models=args.model, tools=args.tool, metadata=parse_metadata(args.meta)
    )
    if args.max_tokens:
        version.default_sampling.max_tokens = args.max_tokens
    if args.temperature is not None:
        version.default_sampling.temperature = args.temperature
    resp = ctx.call("CreateAgentVersion", pb.CreateAgentVersionRequest(agent=args.agent, version=version))
    return ctx.emit(resp, lambda r: print_agent(r.agent))


def versions_list(ctx: Ctx, args: argparse.Namespace) -> int:
    """Versions with their traffic weights; --json gives the whole agent (GetAgentResponse)."""
    resp = ctx.call("GetAgent", pb.GetAgentRequest(name=args.agent))

    def human(r) -> None:
        weights = {w.version: w.weight for w in r.agent.traffic}
        rows = [
            [
                v.version,
                weights.get(v.version, 0),
                ",".join(v.models),
                ",".join(v.tools),
                output.when(v.create_time),
            ]
            for v in r.agent.versions
        ]
        output.table(("VERSION", "WEIGHT", "MODELS", "TOOLS", "CREATED"), rows)

    return ctx.emit(resp, human)


# --- traffic --------------------------------------------------------------------------------


def parse_weights(items: list[str]) -> list[pb.TrafficWeight]:
    """["v1=90", "v2=10"] -> TrafficWeights; the registry checks the sum and the versions."""
    weights, seen = [], set()
    for item in items:
        version, value = key_value(item, "a weight")
        try:
            weight = int(value)
        except ValueError:
            raise UsageError(f"weight of {version!r} must be a whole number, got {value!r}") from None
        if version in seen:
            raise UsageError(f"version {version!r} is named twice")
        seen.add(version)
        weights.append(pb.TrafficWeight(version=version, weight=weight))
    return weights


def _print_traffic(agent: pb.Agent) -> None:
    print(f"{agent.name}: {traffic_text(agent) or '(no split)'}")


def traffic_set(ctx: Ctx, args: argparse.Namespace) -> int:
    req = pb.SetTrafficSplitRequest(agent=args.agent, traffic=parse_weights(args.weights))
    resp = ctx.call("SetTrafficSplit", req)
    return ctx.emit(resp, lambda r: _print_traffic(r.agent))


def traffic_rollback(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("RollbackTrafficSplit", pb.RollbackTrafficSplitRequest(agent=args.agent))
    return ctx.emit(resp, lambda r: _print_traffic(r.agent))


def traffic_show(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("GetAgent", pb.GetAgentRequest(name=args.agent))
    return ctx.emit(resp, lambda r: _print_traffic(r.agent))


# --- parser ---------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    agents = sub.add_parser("agents", help="agents: list, get, create, state, delete")
    a = agents.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = a.add_parser("list", parents=[common], help="list agents")
    p.add_argument("--project", help="only this project")
    p.add_argument("--type", type=AGENT_TYPE, help="only this type (rag, code, ...)")
    p.add_argument("--state", type=AGENT_STATE, help="only this state (online, ...)")
    p.set_defaults(handler=agents_list)
    p = a.add_parser("get", parents=[common], help="one agent with versions and traffic")
    p.add_argument("name")
    p.set_defaults(handler=agents_get)
    p = a.add_parser("create", parents=[common], help="register an agent (state registered)")
    p.add_argument("name")
    p.add_argument("--project", required=True, help="owning project (casbin domain)")
    p.add_argument("--type", type=AGENT_TYPE, help="rag, multimodal, rpa, realtime-risk, code, custom")
    p.add_argument("--spiffe-id", help="SPIFFE id of its cert (default spiffe://<td>/agent/<name>)")
    p.add_argument("--description")
    p.add_argument("--slo-class", type=SLO_CLASS, help="realtime, interactive, batch")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="time-to-first-token target")
    p.add_argument("--tbt-ms", type=float, default=0.0, help="time-between-tokens target")
    p.add_argument("--e2e-ms", type=float, default=0.0, help="end-to-end target")
    p.add_argument("--pii", action="append", default=[], metavar="KIND[=MODE]", help="PII kind to mask")
    p.add_argument("--rpm", type=int, default=0, help="requests per minute (0 = unlimited)")
    p.add_argument("--tpm", type=int, default=0, help="tokens per minute (0 = unlimited)")
    p.set_defaults(handler=agents_create)
    p = a.add_parser("state", parents=[common], help="move an agent through its lifecycle")
    p.add_argument("name")
    p.add_argument("state", type=AGENT_STATE, metavar="STATE", help="online, draining, offline, retired")
    p.set_defaults(handler=agents_state)
    p = a.add_parser(
        "api-key-auth", parents=[common],
        help="let agent-bound API keys stand in for the agent's certificate (on) or not (off, the default)",
    )  # fmt: skip
    p.add_argument("name")
    p.add_argument("switch", choices=("on", "off"))
    p.set_defaults(handler=agents_api_key_auth)

    versions = sub.add_parser("versions", help="agent versions: list, create, delete")
    v = versions.add_subparsers(dest="verb", required=True, metavar="ACTION")
    agent_deletes({"agents": a, "versions": v}, common)
    p = v.add_parser("list", parents=[common], help="versions of an agent with their weights")
    p.add_argument("agent")
    p.set_defaults(handler=versions_list)
    p = v.add_parser("create", parents=[common], help="add a version pinning models and tools")
    p.add_argument("agent")
    p.add_argument("version", help="label, e.g. v2")
    p.add_argument("--model", action="append", default=[], help="catalog model (repeat; first = primary)")
    p.add_argument("--tool", action="append", default=[], help="catalog tool, name or name@version (repeat)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="free metadata (repeat)")
    p.add_argument("--max-tokens", type=int, default=0, help="default max_tokens")
    p.add_argument("--temperature", type=float, default=None, help="default temperature")
    p.set_defaults(handler=versions_create)

    traffic = sub.add_parser("traffic", help="canary traffic split: show, set, rollback")
    t = traffic.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = t.add_parser("show", parents=[common], help="the current split")
    p.add_argument("agent")
    p.set_defaults(handler=traffic_show)
    p = t.add_parser("set", parents=[common], help="set weights, e.g. v1=90 v2=10 (sum 100)")
    p.add_argument("agent")
    p.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    p.set_defaults(handler=traffic_set)
    p = t.add_parser("rollback", parents=[common], help="restore the previous split")
    p.add_argument("agent")
    p.set_defaults(handler=traffic_rollback)
