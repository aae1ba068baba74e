"""The Harness next to LiteLLM, as users compare gateways: the official `openai` async client
streaming the same chat completions (same messages, max_tokens 8) through
  (d) nothing: straight to the local stack's OpenAI-protocol engine simulator (sim-2, the
      vLLM-flavoured HTTP API; time scale 1000: 8 tokens cost it ~0.05 ms),
  (l) the LiteLLM proxy (no database, no callbacks, 2 workers) in front of that same simulator,
  (h) the Harness (Envoy + router, mTLS, policy, audit, cost) in front of that same simulator: the
      stack also serves the model on sim-0 (Triton's gRPC protocol), which the bench deregisters
      from the pool first, so every path reaches the same engine (`--stack-engines` keeps both,
      and the routers pick one per request, as runs before 2026-12-03 did),
  (e) Envoy alone: a second Envoy with the front door's own mTLS listener (same TLS, codec,
      timeouts and HTTP filters, built from the stack's bootstrap by bench/_envoy_floor.py) that
      proxies /v1/* straight to sim-2, no router. Agents must come through that listener, so
      (e) is the floor of the Harness's topology; the client presents the same certificate as (h),
  (p) Envoy + a bare Python relay: the same floor Envoy, its upstream a raw ASGI app that relays
      to sim-2 with the router's own engine client (engine_http.open_session's aiohttp session),
      served as the router serves its OpenAI front door (bench/_http_relay.py: the router's
      uvicorn/httptools server, certificate and mTLS, so Envoy's cluster to it is the router's
      own): the floor of "Envoy mTLS + any Python ASGI front door + the router's engine client",
at several concurrencies. At each concurrency the paths take turns (--rounds, 5), so a busy spell on
the shared machine falls on every path, not on one. "Added" is a path's p50 minus (d)'s: what the gateway costs on top
of calling an engine directly with the same client. CPU per request is the gateway's
processes (LiteLLM's; both routers and Envoy; the floor Envoy; the floor Envoy and the relay),
read from /proc; a table below
gives it process by process.

LiteLLM is installed by this script into a throwaway virtualenv (`--venv DIR` keeps and reuses
one); it is never a dependency of the project. Needs network access to PyPI the first time.
LiteLLM runs as its docs start it: `litellm --config` with 2 workers, a master key, no database
and no callbacks.
Targets: the Harness adds at most 1/10 of LiteLLM's latency at every level and uses at most
1/5 of its CPU per request. The floor line gives (e)'s added p50 as a share of LiteLLM's next to
(h)'s: the least the mandated topology can score against that target; the relay line gives (p)'s,
the least any Python front door behind it can score.

Usage: python bench/vs_litellm.py [--quick] [--requests 200] [--concurrency 1,16,64] [--rounds 5]
       [--venv DIR] [--stack-engines]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx2
import openai
from _cli import closed_loop_parser, run_closed_loop
from _common import pct
from _envoy_floor import start_floor_envoy
from openai_frontdoor import Level, cpu_split, gateway_pids, interleaved, openai_call
from router_overhead import cmdline, env_of, stack_pids, start_stack, tls_flags_of

LITELLM = "litellm==1.110.2"
# What its proxy needs to start (the `proxy` extra, without the enterprise and cloud-vendor parts;
# the extra itself also pins `litellm-proxy`, which not every package index carries).
PROXY_DEPS = (
    "fastapi>=0.136.3,<1.0", "uvicorn>=0.33.0,<1.0", "gunicorn>=23.0.0,<24.0", "backoff>=2.2.1,<3.0",
    "rq>=2.7.0,<3.0", "orjson>=3.11.6,<4.0", "apscheduler>=3.11.2,<4.0", "pyjwt>=2.13.0,<3.0",
    "python-multipart>=0.0.27,<1.0", "cryptography>=49.0.0,<51.0", "websockets>=15.0.1,<16.0",
    "uvloop>=0.22.1,<1.0", "fastapi-sso>=0.19.0,<1.0", "pynacl>=1.6.2,<2.0", "email-validator",
    "rich>=13.9.4,<14.0", "polars>=1.38.1,<2.0", "tomlkit", "semver>=3.0.4,<4", "expression>=5.6.0,<6.0",
    "backports-zstd>=1.0.0,<2.0", "restrictedpython>=8.5,<9.0", "inquirerpy", "mcp>=2.3.0,<3", "boto3",
    "azure-identity", "azure-storage-blob", "soundfile",
)  # fmt: skip
MASTER_KEY = "sk-harness-bench-" + os.urandom(8).hex()  # LiteLLM refuses to start without one
MAX_TOKENS = 8
OPENAI_SIM_LOG = "enginesim-2.log"  # sim-2, the stack's simulator that speaks the OpenAI HTTP API
ENGINE_MODEL = "llama-3-8b-instruct"  # its model name (the Harness's catalog calls it llama-3-8b)
Gateway = tuple[int, str]  # a gateway process's pid and its OpenAI base URL
OPENAI_SIM = "sim-2"  # that simulator's pool endpoint name
PATHS = ("(d) direct", "(l) LiteLLM", "(h) Harness", "(e) Envoy only", "(p) Envoy+relay")


def litellm_venv(where: Path) -> Path:
    """A virtualenv with LiteLLM's proxy, made once under `where`."""
    litellm = where / "bin" / "litellm"
    if not litellm.exists():
        print(f"installing {LITELLM} into a throwaway virtualenv {where} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
        pip = [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, LITELLM, *PROXY_DEPS], check=True)
    return litellm


def simulator_openai_url(root: Path) -> str:
    """The stack's OpenAI-protocol simulator's base URL, from its startup log line."""
    log = root / "logs" / OPENAI_SIM_LOG
    for line in log.read_text().splitlines():
        if " openai=http" in line:
            return line.split(" openai=", 1)[1].split()[0] + "/v1"
    raise SystemExit(f"no OpenAI URL in {log}")


def hold_to_engine(root: Path, tls: ssl.SSLContext) -> None:
    """Deregisters the stack's other endpoints (sim-0, sim-1) from the pool with the operator's CLI,
    then waits until the routers serve the model from OPENAI_SIM alone (the answer's
    x-harness-deployment header), so the Harness is measured in front of the engine LiteLLM has."""
    env = {**os.environ, **env_of(root)}
    harness = Path(sys.executable).parent / "harness"
    for name in ("sim-0", "sim-1"):
        subprocess.run(
            [str(harness), "endpoints", "deregister", name], env=env, check=True, capture_output=True
        )
    url = env["HARNESS_OPENAI_BASE_URL"] + "/chat/completions"
    body = {
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "which engine?"}],
        "max_tokens": 1,
    }
    headers = {"authorization": f"Bearer {env['HARNESS_TOKEN']}"}
    in_a_row, deadline = 0, time.monotonic() + 30
    with httpx2.Client(verify=tls, timeout=10) as http:
        while in_a_row < 10:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the routers still serve llama-3-8b from another endpoint than {OPENAI_SIM}"
                )
            served = http.post(url, json=body, headers=headers).headers.get("x-harness-deployment", "")
            in_a_row = in_a_row + 1 if served.endswith("@" + OPENAI_SIM) else 0
            time.sleep(0.05 if in_a_row else 0.5)


def start_litellm(
    litellm: Path, engine_url: str, tmp: Path, started: list[subprocess.Popen]
) -> tuple[subprocess.Popen, str]:
    """Starts the proxy (its own process group, with its workers; added to `started` at once)."""
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: llama-3-8b\n    litellm_params:\n"
        f"      model: openai/{ENGINE_MODEL}\n      api_base: {engine_url}\n      api_key: fake\n"
        "litellm_settings:\n  telemetry: false\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp / "litellm.log").open("wb")
    proc = subprocess.Popen(
        [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={
            **os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
            "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        },
    )  # fmt: skip
    started.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # its imports take minutes on a busy 2-core machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"litellm exited; see {tmp / 'litellm.log'}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as resp:
                if resp.status == 200:
                    return proc, f"{url}/v1"
        time.sleep(0.5)
    raise SystemExit(f"litellm did not come up; see {tmp / 'litellm.log'}")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (LiteLLM's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def litellm_pids(pid: int) -> dict[int, str]:
    """LiteLLM's master and its workers, pid -> name."""
    return {p: "litellm master" if p == pid else "litellm workers" for p in process_tree(pid)}


def start_http_relay(root: Path, engine_url: str) -> tuple[subprocess.Popen, str]:
    """bench/_http_relay.py in front of the engine, with router-1's certificate, key and CA (as its
    command line names them); returns it and the https:// URL the floor Envoy reaches it at."""
    flags = tls_flags_of(cmdline(stack_pids(root)["router-1"]))
    relay = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_http_relay.py")), engine_url, *flags],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = relay.stdout.readline().strip()  # type: ignore[union-attr]
    if not port:
        relay.kill()
        raise SystemExit("the Python relay did not start")
    return relay, f"https://127.0.0.1:{port}"


async def measure(
    args, root: Path, engine_url: str, litellm_at: Gateway, floor_at: Gateway, relay_at: tuple[int, Gateway]
) -> dict:
    """Every path at every concurrency; `litellm_at` and `floor_at` are (pid, base URL), `relay_at`
    the relay's pid and its floor Envoy's (pid, base URL)."""
    env = env_of(root)
    tls = client_tls(env)
    limits = httpx2.Limits(max_connections=256, max_keepalive_connections=256)

    def client(base: str, key: str, verify: ssl.SSLContext | bool = True) -> openai.AsyncOpenAI:
        http = httpx2.AsyncClient(verify=verify, limits=limits, timeout=120)
        return openai.AsyncOpenAI(base_url=base, api_key=key, http_client=http, max_retries=0)

    clients = {
        "(d) direct": (client(engine_url, "unused"), {}, ENGINE_MODEL),
        "(l) LiteLLM": (client(litellm_at[1], MASTER_KEY), litellm_pids(litellm_at[0]), "llama-3-8b"),
        "(h) Harness": (
            client(env["HARNESS_OPENAI_BASE_URL"], env["HARNESS_TOKEN"], tls),
            gateway_pids(root),
            "llama-3-8b",
        ),
        "(e) Envoy only": (client(floor_at[1], "unused", tls), {floor_at[0]: "floor envoy"}, ENGINE_MODEL),
        "(p) Envoy+relay": (
            client(relay_at[1][1], "unused", tls),
            {relay_at[1][0]: "floor envoy", relay_at[0]: "python relay"},
            ENGINE_MODEL,
        ),
    }
    rows: dict[tuple[str, int], Level] = {}
    paths = {
        label: (openai_call(api, MAX_TOKENS, model), pids) for label, (api, pids, model) in clients.items()
    }
    for c in args.concurrency:
        rows.update(await interleaved(paths, c, max(args.requests, 4 * c), args.rounds))
    for api, _, _ in clients.values():
        await api.close()
    return rows


def client_tls(env: dict[str, str]) -> ssl.SSLContext:
    """The demo agent's client certificate, as the Harness and the floor Envoys require."""
    tls = ssl.create_default_context(cafile=env["HARNESS_CA"])
    tls.load_cert_chain(env["HARNESS_CERT"], env["HARNESS_KEY"])
    return tls


def added_p50(rows: dict, label: str, c: int) -> float:
    """`label`'s p50 minus the direct path's at concurrency `c` (ms)."""
    return pct(rows[(label, c)].latencies, 50) - pct(rows[("(d) direct", c)].latencies, 50)


def share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else float("inf")


def report(rows: dict, args) -> None:
    print(
        f"\nHarness vs LiteLLM: openai async client streaming chat completions, max_tokens {MAX_TOKENS}; "
        f"closed loop; {os.cpu_count()} CPUs shared by client, gateways and engines"
    )
    head = (
        f"{'path':<16}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'errors':>8}{'added p50':>11}"
        f"{'gw CPU ms':>11}"
    )
    print(head + "\n" + "-" * len(head))
    for c in args.concurrency:
        for label in PATHS:
            r = rows[(label, c)]
            cpu = f"{r.server_cpu_ms:>11.2f}" if label != "(d) direct" else f"{'-':>11}"
            print(
                f"{label:<16}{c:>5}{pct(r.latencies, 50):>9.2f}{pct(r.latencies, 99):>9.2f}{r.rps:>8.0f}"
                f"{r.errors:>8}{added_p50(rows, label, c):>11.2f}{cpu}"
            )
    print("gateway CPU ms per request, by process:")
    for c in args.concurrency:
        for label in PATHS[1:]:
            print(f"  {label:<15} c={c:<3} {cpu_split(rows[(label, c)])}")
    for c in args.concurrency:
        latency_ratio = share(added_p50(rows, "(h) Harness", c), added_p50(rows, "(l) LiteLLM", c))
        cpu_ratio = share(rows[("(h) Harness", c)].server_cpu_ms, rows[("(l) LiteLLM", c)].server_cpu_ms)
        ok = latency_ratio <= 0.1 and cpu_ratio <= 0.2
        print(
            f"c={c}: {'PASS' if ok else 'FAIL'}: the Harness adds {latency_ratio:.2f}x LiteLLM's added p50 "
            f"(target <= 0.1) and uses {cpu_ratio:.2f}x its CPU per request (target <= 0.2)"
        )
        print("  floor " + floor_line(rows, "(e) Envoy only", "Envoy's mTLS hop alone", c))
        print("  floor " + floor_line(rows, "(p) Envoy+relay", "Envoy + a bare Python relay", c))


def floor_line(rows: dict, label: str, what: str, c: int) -> str:
    """A floor path's added p50 and CPU per request as shares of LiteLLM's, beside the Harness's."""
    lite, harness, floor = rows[("(l) LiteLLM", c)], rows[("(h) Harness", c)], rows[(label, c)]
    lite_added = added_p50(rows, "(l) LiteLLM", c)
    return (
        f"{label}: {what} adds {added_p50(rows, label, c):.2f} ms = "
        f"{share(added_p50(rows, label, c), lite_added):.2f}x LiteLLM's added p50 "
        f"(the Harness: {share(added_p50(rows, '(h) Harness', c), lite_added):.2f}x); CPU per request "
        f"{floor.server_cpu_ms:.2f} ms = {share(floor.server_cpu_ms, lite.server_cpu_ms):.2f}x LiteLLM's "
        f"(the Harness: {share(harness.server_cpu_ms, lite.server_cpu_ms):.2f}x)"
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="vs-litellm-") as tmp_name:
        tmp = Path(tmp_name)
        litellm = litellm_venv(Path(args.venv) if args.venv else tmp / "venv")
        started: list[subprocess.Popen] = []
        try:
            # The stack first: `harness up` waits 60 s for health, LiteLLM's start takes minutes.
            print("starting the local stack (harness up --free-ports, time scale 1000)...", flush=True)
            started.append(start_stack(tmp / ".harness", 1000.0))
            engine_url = simulator_openai_url(tmp / ".harness")
            if not args.stack_engines:
                hold_to_engine(tmp / ".harness", client_tls(env_of(tmp / ".harness")))
            print("starting LiteLLM...", flush=True)
            lite, lite_url = start_litellm(litellm, engine_url, tmp, started)
            door_url = env_of(tmp / ".harness")["HARNESS_OPENAI_BASE_URL"]
            floor, floor_url = start_floor_envoy(tmp / ".harness", engine_url, door_url)
            started.append(floor)
            relay, relay_url = start_http_relay(tmp / ".harness", engine_url)
            started.append(relay)
            relay_floor, relay_floor_url = start_floor_envoy(
                tmp / ".harness", relay_url, door_url, name="envoy-floor-relay"
            )
            started.append(relay_floor)
            rows = await measure(
                args, tmp / ".harness", engine_url, (lite.pid, lite_url), (floor.pid, floor_url),
                (relay.pid, (relay_floor.pid, relay_floor_url)),
            )  # fmt: skip
        finally:  # whatever failed, nothing this run started is left behind
            for proc in started:
                with contextlib.suppress(ProcessLookupError):
                    if proc.args[0] == str(litellm):  # its own session: the workers go with it
                        os.killpg(proc.pid, signal.SIGTERM)
                    else:
                        proc.terminate()
            for proc in started:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    report(rows, args)


def main(argv: list[str] | None = None) -> None:
    p = closed_loop_parser(__doc__.splitlines()[0], (200, 100), "fewer requests per level")
    p.add_argument("--venv", default="", help="keep LiteLLM's virtualenv here and reuse it on later runs")
    p.add_argument(
        "--rounds", type=int, default=5,
        help="turns each path takes per level, in rotation, so a busy spell on the machine falls on every path",
    )  # fmt: skip
    p.add_argument(
        "--stack-engines", action="store_true",
        help=f"leave the stack's endpoints registered: the Harness serves the model from sim-0 (Triton gRPC) "
        f"or {OPENAI_SIM}, not only from the engine LiteLLM has",
    )  # fmt: skip
    run_closed_loop(p, argv, main_async)


if __name__ == "__main__":
    main()
