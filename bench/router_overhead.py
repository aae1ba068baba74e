"""Router overhead: the stock tritonclient (grpc.aio, ModelStreamInfer, one stream per request)
against (a) the simulator directly, (r) a bare grpc.aio relay in front of it (bench/_grpc_relay.py:
the floor of any Python gRPC hop), (rt) the same relay listening as router-1's front door does
(mTLS with router-1's certificate, key and CA, client certificate required, the router's server
options; the client presents the agent's certificate as on (b)): the floor of any authenticating
Python gRPC hop, (b) a router's Triton-compatible front door directly (mTLS
with the agent's own certificate: the router takes the agent identity from the peer
certificate), (c) Envoy + router (mTLS to Envoy, which forwards the agent identity in XFCC),
(d) Envoy + the router as its ext_proc endpoint picker (a second Envoy built from the stack's
own bootstrap by services/envoy/extproc.py: the router decides, Envoy carries the tokens; the
response body still streams through the router, which counts and redacts it, as the demo agent's
PII policy needs), then (e) Envoy + router and (f) the ext_proc Envoy with the response body
bypassing the router entirely (`--no-response-body`), both as risk-agent, whose policy redacts
no output (the only kind of agent that path serves).

Starts the local stack (`harness up --free-ports`, simulator time scale 1000 so an 8-token
generation costs the engine ~0.05 ms) in a temporary directory. Closed loop of C workers per
concurrency level; every request has a distinct prompt so the router's result cache never
answers (each call is dispatched to the engine). Prints p50/p99 latency, throughput and the
ratios to (a), and the CPU the Harness processes on each path spent per request and per token
(from /proc: the relay; the TLS relay; router-1; Envoy and both routers; the ext_proc Envoy and both routers).
Target: the router adds < 1 ms at p50 at concurrency 1. The last lines give the router's CPU per
request and added p50 against (rt), the floor with the same transport security.

The routers serve llama-3-8b from sim-0 (Triton's protocol) and sim-2 (the OpenAI API, over
HTTP). The relays and the direct path only ever talk to sim-0 (plaintext, as the routers do), so by default the bench drains the
stack's OpenAI-protocol simulators before it measures and every path reaches the same engine over
the same protocol; `--engines all` keeps them (the router then sends part of the calls over HTTP).

Caveat: client, two routers, Envoy, the simulators and the other services share this
machine's cores, so the higher concurrencies measure the machine as much as the router.

Usage: python bench/router_overhead.py [--quick] [--requests 300] [--concurrency 1,16,64]
       [--max-tokens 8] [--time-scale 1000] [--engines triton|all]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tritonclient.grpc.aio as tgrpc_aio
import yaml
from _cli import closed_loop_parser, run_closed_loop
from _common import REPO, pct, stream_one

from services.envoy.extproc import with_extproc
from services.stack.simulators import DEFAULT_SIMULATORS

MODEL = "llama-3-8b-instruct"  # sim-0's Triton model; the router maps it to catalog llama-3-8b


def start_stack(root: Path, time_scale: float) -> subprocess.Popen:
    harness = Path(sys.executable).parent / "harness"
    proc = subprocess.Popen(
        [str(harness), "up", "--free-ports", "--root", str(root), "--time-scale", str(time_scale)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("healthy in"):
            return proc
    raise SystemExit("stack did not start; see " + str(root / "logs"))


def start_relay(upstream: str, tls_flags: list[str] = ()) -> tuple[subprocess.Popen, str]:
    """bench/_grpc_relay.py in front of `upstream`; plaintext, or mTLS with `tls_flags`."""
    relay = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_grpc_relay.py")), upstream, *tls_flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    return relay, f"127.0.0.1:{relay.stdout.readline().strip()}"  # type: ignore[union-attr]


def tls_flags_of(argv: list[str]) -> list[str]:
    """The --tls-cert/--tls-key/--tls-ca flags and values in a service's command line."""
    names = ("--tls-cert", "--tls-key", "--tls-ca")
    return [part for i, flag in enumerate(argv[:-1]) if flag in names for part in (flag, argv[i + 1])]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def start_extproc_envoy(root: Path, count_tokens: bool) -> tuple[subprocess.Popen, str]:
    """Another Envoy: the stack's bootstrap with the ext_proc picker on a free port."""
    port, admin = free_port(), free_port()
    cfg = with_extproc(
        yaml.safe_load((root / "envoy.yaml").read_text()), port, admin, count_tokens=count_tokens
    )
    path = root / f"envoy-extproc-{count_tokens}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = (root / "logs" / f"envoy-extproc-{count_tokens}.log").open("w")
    envoy = Path(sys.executable).parent / "envoy"
    proc = subprocess.Popen(
        [str(envoy), "-c", str(path), "--disable-hot-restart", "--concurrency", "2"], stdout=log, stderr=log
    )
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the ext_proc Envoy did not listen; see {root / 'logs' / 'envoy-extproc.log'}")


def drain_openai_simulators(root: Path, env: dict[str, str]) -> None:
    """Takes the stack's OpenAI-protocol simulators out of the routers' choice (the pool's drain,
    pushed to the routers by its watch), so the router reaches sim-0 as the relay does."""
    harness = Path(sys.executable).parent / "harness"
    for spec in DEFAULT_SIMULATORS:
        if spec.protocol == "openai":
            subprocess.run(
                [str(harness), "endpoints", "drain", spec.name, "--wait", "10"],
                cwd=root.parent, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
    time.sleep(2.0)  # the pool's watch carries the drain to both routers well within this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (from /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def stack_pids(root: Path) -> dict[str, int]:
    lines = (root / "stack.pids").read_text().splitlines()
    return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}


def env_of(root: Path) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in (root / "env").read_text().splitlines())
    return {k: v.strip("'") for k, v in pairs}


def router_address(root: Path) -> str:
    return next(
        line.split(" serving on ")[1].split()[0]
        for line in (root / "logs" / "router-1.log").read_text().splitlines()
        if " serving on " in line
    )


async def run_level(make_client, headers, concurrency: int, requests: int, max_tokens: int, tag: str):
    """Closed loop: `concurrency` workers share one client (one HTTP/2 channel, as an app would)
    and issue `requests` calls in total. Returns (latencies ms, seconds, TTFTs ms)."""
    async with make_client() as client:
        for i in range(max(5, concurrency)):  # warm-up: channel, TLS, router caches
            await stream_one(client, MODEL, f"warm {tag} {i} ledger policy", max_tokens, f"w{i}", headers)
        latencies: list[float] = []
        ttfts: list[float] = []
        counter = iter(range(requests))

        async def worker() -> None:
            for i in counter:
                prompt = f"{tag} c{concurrency} request {i}: summarise the ledger policy for a new analyst"
                ttft, e2e, chunks = await stream_one(client, MODEL, prompt, max_tokens, f"r{i}", headers)
                if chunks < 1:
                    raise RuntimeError("empty stream")
                latencies.append(e2e)
                ttfts.append(ttft)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0, ttfts


async def main_async(args: argparse.Namespace) -> None:
    rows: dict[tuple[str, int], tuple[list[float], float, list[float]]] = {}
    cpu: dict[tuple[str, int], float] = {}  # ms of the path's Harness processes per request (incl. warm-up)
    others: dict[tuple[str, int], float] = {}  # ms of registry, pool, audit and cost per request
    with tempfile.TemporaryDirectory(prefix="router-overhead-") as tmp:
        root = Path(tmp) / ".harness"
        print(
            f"starting the local stack (harness up --free-ports, time scale {args.time_scale:g})...",
            flush=True,
        )
        proc = start_stack(root, args.time_scale)
        started: list[subprocess.Popen] = []
        try:
            env = env_of(root)
            sim_addr = env["HARNESS_TRITON_ADDRS"].split(",")[0]  # sim-0 serves llama-3-8b-instruct
            tls = {
                "ssl": True,
                "root_certificates": env["HARNESS_CA"],
                "private_key": env["HARNESS_KEY"],
                "certificate_chain": env["HARNESS_CERT"],
            }
            auth = {"authorization": f"Bearer {env['HARNESS_TOKEN']}"}
            if args.engines == "triton":
                drain_openai_simulators(root, env)
            relay, relay_addr = start_relay(sim_addr)
            started.append(relay)
            pids = stack_pids(root)
            # router-1's own certificate, key and CA, as its command line names them
            relay_tls, relay_tls_addr = start_relay(sim_addr, tls_flags_of(cmdline(pids["router-1"])))
            started.append(relay_tls)
            extproc, extproc_addr = start_extproc_envoy(root, count_tokens=True)
            started.append(extproc)
            bypass, bypass_addr = start_extproc_envoy(root, count_tokens=False)
            started.append(bypass)
            risk = dict(tls, private_key=str(root / "certs/agents/risk-agent.key"),
                        certificate_chain=str(root / "certs/agents/risk-agent.pem"))  # fmt: skip
            routers = [pids["router-1"], pids["router-2"]]
            services = [pids[name] for name in ("registry", "pool", "audit", "cost")]
            spenders = {
                "(a) direct": [],
                "(r) bare relay": [relay.pid],
                "(rt) relay mTLS": [relay_tls.pid],
                "(b) router": [pids["router-1"]],
                "(c) envoy+router": [pids["envoy"], *routers],
                "(d) envoy+ext_proc": [extproc.pid, *routers],
                "(e) envoy+router*": [pids["envoy"], *routers],
                "(f) ext_proc bypass*": [bypass.pid, *routers],
            }
            paths = {
                "(a) direct": (lambda: tgrpc_aio.InferenceServerClient(sim_addr), None),
                "(r) bare relay": (lambda: tgrpc_aio.InferenceServerClient(relay_addr), None),
                "(rt) relay mTLS": (lambda: tgrpc_aio.InferenceServerClient(relay_tls_addr, **tls), auth),
                "(b) router": (lambda: tgrpc_aio.InferenceServerClient(router_address(root), **tls), auth),
                "(c) envoy+router": (
                    lambda: tgrpc_aio.InferenceServerClient(env["HARNESS_ADDR"], **tls),
                    auth,
                ),
                "(d) envoy+ext_proc": (lambda: tgrpc_aio.InferenceServerClient(extproc_addr, **tls), auth),
                "(e) envoy+router*": (
                    lambda: tgrpc_aio.InferenceServerClient(env["HARNESS_ADDR"], **risk),
                    auth,
                ),
                "(f) ext_proc bypass*": (lambda: tgrpc_aio.InferenceServerClient(bypass_addr, **risk), auth),
            }
            for c in args.concurrency:
                n = max(args.requests, 4 * c)
                for label, (make, headers) in paths.items():
                    before, others_before = cpu_seconds(spenders[label]), cpu_seconds(services)
                    rows[(label, c)] = await run_level(
                        make, headers, c, n, args.max_tokens, label[1 : label.index(")")]
                    )
                    cpu[(label, c)] = (cpu_seconds(spenders[label]) - before) * 1000 / n
                    others[(label, c)] = (cpu_seconds(services) - others_before) * 1000 / n
                    lat, secs, _ = rows[(label, c)]
                    print(f"  {label:<18} c={c:<3} {len(lat)} requests in {secs:.1f}s", flush=True)
        finally:
            for helper in started:
                helper.kill()
            proc.terminate()
            proc.wait(timeout=30)

    print(
        f"\nRouter overhead: tritonclient.grpc.aio ModelStreamInfer, max_tokens {args.max_tokens}, simulator "
        f"time scale {args.time_scale:g}; engines {args.engines}; closed loop, distinct prompts "
        "(no result-cache hits); "
        f"{os.cpu_count()} CPUs shared by client and stack"
    )
    head = (
        f"{'path':<18}{'conc':>5}{'reqs':>6}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}"
        f"{'+p50 ms':>9}{'p50 x':>7}{'p99 x':>7}{'req/s x':>9}{'TTFT p50':>10}{'+TTFT':>7}"
        f"{'CPU ms/req':>11}{'ms/token':>9}"
    )
    print(head + "\n" + "-" * len(head))
    paths_in_order = (
        "(a) direct", "(r) bare relay", "(rt) relay mTLS", "(b) router", "(c) envoy+router", "(d) envoy+ext_proc",
        "(e) envoy+router*", "(f) ext_proc bypass*",
    )  # fmt: skip
    for c in args.concurrency:
        base_lat, base_s, base_ttft = rows[("(a) direct", c)]
        b50, b99, brps = pct(base_lat, 50), pct(base_lat, 99), len(base_lat) / base_s
        for label in paths_in_order:
            lat, secs, ttft = rows[(label, c)]
            p50, p99, rps = pct(lat, 50), pct(lat, 99), len(lat) / secs
            t50 = pct(ttft, 50)
            print(
                f"{label:<18}{c:>5}{len(lat):>6}{p50:>9.2f}{p99:>9.2f}{rps:>8.0f}"
                f"{p50 - b50:>9.2f}{p50 / b50:>7.2f}{p99 / b99:>7.2f}{rps / brps:>9.2f}"
                f"{t50:>10.2f}{t50 - pct(base_ttft, 50):>7.2f}"
                f"{cpu[(label, c)]:>11.2f}{cpu[(label, c)] / args.max_tokens:>9.3f}"
            )
    c1 = min(args.concurrency)
    added_b = pct(rows[("(b) router", c1)][0], 50) - pct(rows[("(a) direct", c1)][0], 50)
    added_c = pct(rows[("(c) envoy+router", c1)][0], 50) - pct(rows[("(a) direct", c1)][0], 50)
    added_r = pct(rows[("(r) bare relay", c1)][0], 50) - pct(rows[("(a) direct", c1)][0], 50)
    added_d = pct(rows[("(d) envoy+ext_proc", c1)][0], 50) - pct(rows[("(a) direct", c1)][0], 50)
    added_e = pct(rows[("(e) envoy+router*", c1)][0], 50) - pct(rows[("(a) direct", c1)][0], 50)
    added_f = pct(rows[("(f) ext_proc bypass*", c1)][0], 50) - pct(rows[("(a) direct", c1)][0], 50)
    ok = added_b < 1.0
    print(
        f"verdict: {'PASS' if ok else 'FAIL'}: the router adds {added_b:.2f} ms at p50 at concurrency {c1} "
        f"(target < 1 ms; includes mTLS + auth on the router hop); Envoy + router add {added_c:.2f} ms. "
        "Provisional: one run on a shared machine.\n"
        f"floor: a bare grpc.aio relay with no logic adds {added_r:.2f} ms; the router's own work adds "
        f"{added_b - added_r:.2f} ms above it.\n"
        f"ext_proc: Envoy + the router as its endpoint picker add {added_d:.2f} ms "
        f"(vs {added_c:.2f} ms through Envoy + router); CPU per request of the Harness processes "
        f"{cpu[('(d) envoy+ext_proc', c1)]:.2f} ms vs {cpu[('(c) envoy+router', c1)]:.2f} ms.\n"
        f"* risk-agent (no output policy): with the response bypassing the router, Envoy + picker add "
        f"{added_f:.2f} ms (vs {added_e:.2f} ms through Envoy + router); CPU per request "
        f"{cpu[('(f) ext_proc bypass*', c1)]:.2f} ms vs {cpu[('(e) envoy+router*', c1)]:.2f} ms.\n"
        "the other services (registry, pool, audit, cost) spent, per request through Envoy + router: "
        + ", ".join(f"{others[('(c) envoy+router', c)]:.2f} ms at c={c}" for c in args.concurrency)
        + " (audit and cost ingest each call's events; the registry and pool serve the routers' watches)"
    )
    print(relay_floors(rows, cpu, args.concurrency))


def relay_floors(rows: dict, cpu: dict, concurrency: list[int]) -> str:
    """The router (b) against both relays, per level: its CPU per request as a multiple of each
    relay's, and the p50 it adds above each."""
    lines = ["router (b) vs the relay floors: CPU per request ratio, p50 above the relay"]
    for c in concurrency:
        b50 = pct(rows[("(b) router", c)][0], 50)
        parts = [
            f"{name} {cpu[('(b) router', c)] / cpu[(label, c)]:.2f}x CPU "
            f"({cpu[('(b) router', c)]:.2f} / {cpu[(label, c)]:.2f} ms), "
            f"{b50 - pct(rows[(label, c)][0], 50):+.2f} ms p50"
            for name, label in (("router/(r)", "(r) bare relay"), ("router/(rt)", "(rt) relay mTLS"))
        ]
        lines.append(f"  c={c}: " + "; ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = closed_loop_parser(__doc__.splitlines()[0], (300, 150), "fewer requests per level (for `make bench`)")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--time-scale", type=float, default=1000.0)
    p.add_argument(
        "--engines", choices=("triton", "all"), default="triton",
        help="triton (default): the routers serve from sim-0 only, as the relay does; all: also sim-2 (OpenAI API)",
    )  # fmt: skip
    run_closed_loop(p, argv, main_async)


if __name__ == "__main__":
    main()
