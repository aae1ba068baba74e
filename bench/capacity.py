"""Capacity figures for sizing a scaled-out Harness (README, "Scaling out"): what one router
process, one audit replica and one cost replica handle, measured on this machine, plus the Redis
commands one request costs.

Starts the mesh of tests/helpers/scaleout.py with one replica of each (PostgreSQL at
127.0.0.1:5432, fresh databases dropped afterwards; a private redis-server on a free port so
its command counts are this bench's alone), then:
- router: a closed loop of --concurrency Generate calls for --seconds straight at the router
  (mTLS, agent certificate, user JWT; the simulator runs 20x faster than real time, so the
  engine is not the bottleneck); requests/s and requests per CPU-second of the router process
  (utime+stime from /proc), the figure to divide a fleet's request rate by;
- Redis: commands processed per request during that loop (INFO commandstats);
- audit and cost: --events synthetic events sent the way routers ship them (batches of 256 over
  4 concurrent senders, one unary Ingest / Record call per batch); events/s and events per CPU-second of each service.
Prints the machine's load average next to the figures: on a shared machine they are lower
bounds, and the per-CPU-second ones are the steadier.

Usage: python bench/capacity.py [--seconds 20] [--concurrency 16] [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
import redis  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402
from harness.audit.v1 import audit_pb2, audit_pb2_grpc  # noqa: E402
from harness.common.v1 import common_pb2  # noqa: E402
from harness.cost.v1 import cost_pb2, cost_pb2_grpc  # noqa: E402
from harness.router.v1 import router_pb2, router_pb2_grpc  # noqa: E402

from services.common.server import open_channel  # noqa: E402
from tests.helpers.scaleout import AGENT, MODEL, agent_channel, build_mesh, migrate, seed, start_all, token  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
BATCH, SENDERS = 256, 4


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_round_trips(url: str, stop_at: float) -> tuple[int, int, dict[str, int]]:
    """MONITOR until `stop_at`: (commands clients sent, commands Lua scripts ran inside Redis,
    sent per command name). Only clients' commands are round trips."""
    sent, inner, names = 0, 0, {}
    client = redis.Redis.from_url(url)
    try:
        with client.monitor() as monitor:
            for cmd in monitor.listen():
                if time.monotonic() > stop_at:
                    break
                if cmd.get("client_type") == "lua":
                    inner += 1
                    continue
                sent += 1
                name = cmd["command"].split(" ", 1)[0].lower()
                names[name] = names.get(name, 0) + 1
    finally:
        client.close()
    return sent, inner, names


async def router_loop(mesh, seconds: float, concurrency: int) -> tuple[int, int, float]:
    """(ok, failed, wall seconds) of a closed loop straight at router-0."""
    channel = agent_channel(mesh, 0)
    stub = router_pb2_grpc.RouterStub(channel)
    meta = token(mesh, "budgeted")
    ok = failed = 0
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal ok, failed
        i = 0
        while time.monotonic() < stop:
            req = router_pb2.GenerateRequest(
                prompt=f"capacity {w}-{i} {uuid.uuid4().hex[:6]}",
                sampling=common_pb2.SamplingParams(max_tokens=16),
            )
            try:
                async for _ in stub.Generate(req, metadata=meta, timeout=60):
                    pass
                ok += 1
            except Exception:
                failed += 1
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.monotonic() - started
    await channel.close()
    return ok, failed, wall


async def shipped_per_call(mesh) -> tuple[float, float]:
    """Audit records and ledger rows per answered call, once the router's outbox has drained."""
    import sqlalchemy as sa

    def counts() -> tuple[int, int, int]:
        out = []
        for service, q in (
            ("audit", "SELECT count(*) FROM audit_records WHERE source = 'router'"),
            ("cost", "SELECT count(*), count(DISTINCT request_id) FROM usage_ledger"),
        ):
            engine = sa.create_engine(mesh.db_urls[service])
            try:
                with engine.connect() as conn:
                    out.extend(conn.execute(sa.text(q)).one())
            finally:
                engine.dispose()
        return out[0], out[1], out[2]

    last, stable = None, 0
    while stable < 3:  # the same counts three seconds running: shipped
        await asyncio.sleep(1.0)
        now = await asyncio.to_thread(counts)
        stable = stable + 1 if now == last else 0
        last = now
    audits, rows, calls = last
    return audits / max(calls, 1), rows / max(calls, 1)


async def bytes_per_row(mesh) -> str:
    """PostgreSQL bytes per row (table + indexes + TOAST) of the two tables that grow with traffic."""
    import sqlalchemy as sa

    def read() -> str:
        out = []
        for service, table in (("audit", "audit_records"), ("cost", "usage_ledger")):
            engine = sa.create_engine(mesh.db_urls[service])
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text(f"ANALYZE {table}"))
                    size, rows = conn.execute(
                        sa.text(f"SELECT pg_total_relation_size('{table}'), count(*) FROM {table}")
                    ).one()
            finally:
                engine.dispose()
            out.append(f"{table} {size / max(rows, 1):.0f} bytes/row ({rows} rows)")
        return ", ".join(out)

    return await asyncio.to_thread(read)


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def audit_event(i: int) -> common_pb2.AuditEvent:
    return common_pb2.AuditEvent(
        event_id=str(uuid.uuid4()), time=_now(), kind=common_pb2.AUDIT_EVENT_KIND_MODEL_CALL,
        actor=common_pb2.Actor(user="budgeted", agent=AGENT, agent_version="v1", project="scale", team="ops"),
        correlation=common_pb2.Correlation(request_id=f"req-{i}"), object=f"agent:{AGENT}", action="invoke",
        decision=common_pb2.DECISION_ALLOW, status="OK", model=MODEL, source="router",
    )  # fmt: skip


def usage_event(i: int) -> common_pb2.UsageEvent:
    return common_pb2.UsageEvent(
        event_id=str(uuid.uuid4()), time=_now(),
        actor=common_pb2.Actor(user="budgeted", agent=AGENT, agent_version="v1", project="scale", team="ops"),
        correlation=common_pb2.Correlation(request_id=f"req-{i}"), model=MODEL, deployment="sim-0",
        gpu_type="H100-SXM-80GB", usage=common_pb2.Usage(input_tokens=40, output_tokens=16, gpu_seconds=0.05),
    )  # fmt: skip


async def ingest(mesh, service: str, events: int) -> tuple[float, float]:
    """(events/s, events per CPU-second of the service) for `events` shipped like routers do."""
    proc = mesh.procs[f"{service}-0"]
    channel = open_channel(mesh.addr(f"{service}-0"), mesh.tls("router"))  # only services may append
    if service == "audit":
        stub, make = audit_pb2_grpc.AuditStub(channel), audit_event
        send = lambda batch: stub.Ingest(audit_pb2.IngestRequest(events=batch), timeout=120)  # noqa: E731
    else:
        stub, make = cost_pb2_grpc.CostStub(channel), usage_event
        send = lambda batch: stub.Record(cost_pb2.RecordRequest(events=batch), timeout=120)  # noqa: E731
    per_sender = events // SENDERS

    async def sender(s: int) -> None:
        for start in range(0, per_sender, BATCH):
            await send([make(s * per_sender + start + j) for j in range(min(BATCH, per_sender - start))])

    cpu0, t0 = cpu_seconds(proc.popen.pid), time.monotonic()
    await asyncio.gather(*(sender(s) for s in range(SENDERS)))
    wall, cpu = time.monotonic() - t0, cpu_seconds(proc.popen.pid) - cpu0
    await channel.close()
    return per_sender * SENDERS / wall, per_sender * SENDERS / max(cpu, 1e-9)


def make_databases(admin: str, names: list[str]) -> dict[str, str]:
    urls = {}
    with psycopg.connect(admin, autocommit=True) as conn:
        for service in names:
            db = f"harness_bench_{service}_{uuid.uuid4().hex[:8]}"
            conn.execute(f'CREATE DATABASE "{db}"')
            urls[service] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    return urls


def drop_databases(admin: str, urls: dict[str, str]) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        for url in urls.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


async def run(
    args: argparse.Namespace, urls: dict[str, str], redis_url: str, redis_pid: int, tmp: Path
) -> None:
    migrate(urls)
    mesh = build_mesh(tmp, urls, redis_url, "bench:", routers=1, audits=1, costs=1)
    try:
        await start_all(mesh)
        await seed(mesh)
        async with open_channel(mesh.addr("cost-0"), mesh.tls("cli")) as ops:  # a budget on every call
            budget = cost_pb2.Budget(
                name="capacity", scope=cost_pb2.BUDGET_SCOPE_USER, subject="budgeted",
                period=cost_pb2.BUDGET_PERIOD_DAILY, limit_micro_usd=10**12,
            )  # fmt: skip
            await cost_pb2_grpc.CostStub(ops).SetBudget(cost_pb2.SetBudgetRequest(budget=budget), timeout=10)
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        await router_loop(mesh, 3, 4)  # warm-up: watch streams, connections, budgets read
        router_pid = mesh.procs["router-0"].popen.pid
        cpu0 = cpu_seconds(router_pid)
        watch = asyncio.create_task(
            asyncio.to_thread(redis_round_trips, redis_url, time.monotonic() + args.seconds)
        )
        ok, failed, wall = await router_loop(mesh, args.seconds, args.concurrency)
        cpu = cpu_seconds(router_pid) - cpu0
        sent, inner, per_name = await watch
        print(f"router: {ok} calls ({failed} failed) in {wall:.1f} s = {ok / wall:.0f} req/s; "
              f"router CPU {cpu:.1f} s = {ok / max(cpu, 1e-9):.0f} req per CPU-second", flush=True)  # fmt: skip
        top = ", ".join(
            f"{k} {n / max(ok, 1):.1f}" for k, n in sorted(per_name.items(), key=lambda kv: -kv[1])[:8]
        )
        print(
            f"redis: {sent / max(ok, 1):.1f} round trips per request ({top}); "
            f"{inner / max(ok, 1):.1f} more commands run inside scripts",
            flush=True,
        )
        # Redis's own CPU per request, in a loop without MONITOR (which costs Redis CPU itself)
        rcpu0 = cpu_seconds(redis_pid)
        ok2, _, _ = await router_loop(mesh, args.seconds / 2, args.concurrency)
        rcpu = cpu_seconds(redis_pid) - rcpu0
        print(f"redis CPU: {1e6 * rcpu / max(ok2, 1):.0f} us per request ({ok2} requests)", flush=True)
        audits, usages = await shipped_per_call(mesh)
        print(f"events per call: {audits:.2f} audit records, {usages:.2f} usage rows", flush=True)
        print(f"storage of the routed calls: {await bytes_per_row(mesh)}", flush=True)
        for service in ("audit", "cost"):
            rate, per_cpu = await ingest(mesh, service, args.events)
            print(f"{service} ingest: {rate:.0f} events/s, {per_cpu:.0f} events per CPU-second", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    finally:
        mesh.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--events", type=int, default=20000)
    args = p.parse_args()
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    port = free_port()
    redis_server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    urls = make_databases(admin, ["registry", "pool", "audit", "cost"])
    tmp = Path(tempfile.mkdtemp(prefix="harness-capacity-"))
    try:
        asyncio.run(run(args, urls, f"redis://127.0.0.1:{port}/0", redis_server.pid, tmp))
    finally:
        redis_server.terminate()
        redis_server.wait(timeout=30)
        drop_databases(admin, urls)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
