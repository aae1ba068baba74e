"""`harness up`: the whole local stack as processes, healthy, seeded, and explained.

Two engine simulators with different model sets (sim-0, sim-1), registry, pool, audit, cost,
two routers and the Envoy front proxy, each a child process logging to
.harness/logs/<name>.log. Ctrl-C or SIGTERM stops every child.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.devtools.certs import DEFAULT_SERVICES, CertBundle, make_certs
from services.envoy.methods import idempotent_unary_methods
from services.envoy.render import DEFAULT_HTTP_ROUTES, EnvoyCerts, EnvoySpec, write_envoy_config
from services.stack import demo_tools
from services.stack import prometheus as prom
from services.stack.banner import banner
from services.stack.layout import StackPaths, StackPorts, ports_in_use, redis_prefix_for
from services.stack.openai_engines import OpenAIServer
from services.stack.procs import Child, Supervisor
from services.stack.readiness import StackError, StartupChecks
from services.stack.simulators import DEFAULT_SIMULATORS, SimulatorInstance, SimulatorSpec
from services.stack.stack_env import env_file_text, stack_env
from services.stack.tritons import TritonServer

log = logging.getLogger("harness.up")
SERVICES_WITH_CERTS = (*DEFAULT_SERVICES, "cli")


@dataclass(frozen=True)
class UpConfig:
    root: Path = Path(".harness")
    ports: StackPorts = field(default_factory=StackPorts)
    demo_file: Path = Path("compose/demo.yaml")
    listen_host: str = "127.0.0.1"
    time_scale: float = 1.0
    timeout_s: float = 60.0
    demo_user: str = "alice"
    gpu_type: str = "H100-SXM-80GB"
    gpu_memory_gb: float = 80.0
    simulators: tuple[SimulatorSpec, ...] = DEFAULT_SIMULATORS  # one per ports.enginesim entry
    tritons: tuple[TritonServer, ...] = ()  # the user's own Triton servers (`--triton`)
    openai_engines: tuple[OpenAIServer, ...] = ()  # the user's OpenAI-compatible servers (`--openai-engine`)
    # Shared by both routers (rate limits, result cache, budgets); "" = each router in memory.
    redis_url: str = ""
    prometheus: bool = True  # a Prometheus child scraping the whole stack, with the alert rules
    prometheus_scrape_s: float = prom.DEFAULT_SCRAPE_S


def _py(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


class Stack(StartupChecks):
    def __init__(self, cfg: UpConfig) -> None:
        self.cfg = cfg
        self.paths = StackPaths(cfg.root)
        self.sup = Supervisor()
        demo = yaml.safe_load(cfg.demo_file.read_text()) or {}
        self.demo = demo_tools.with_ledger_at(demo, cfg.ports.demo_ledger)
        self.certs: CertBundle | None = None
        self.catalog_lines: list[str] = []  # how the demo catalog maps onto the user's models
        p = cfg.ports
        if not len(cfg.simulators) == len(p.enginesim) == len(p.enginesim_metrics):
            raise StackError(
                f"{len(cfg.simulators)} simulators need as many enginesim ports and metrics ports; "
                f"got {p.enginesim} and {p.enginesim_metrics}"
            )
        # KV events where every simulator has its two ports (none when the ports were cleared).
        n = len(cfg.simulators)
        kv = p.enginesim_kv_events if len(p.enginesim_kv_events) == n else (0,) * n
        replay = p.enginesim_kv_replay if len(p.enginesim_kv_replay) == n else (0,) * n
        self.sims = [
            SimulatorInstance(spec, port, metrics, kv_port, replay_port)
            for spec, port, metrics, kv_port, replay_port in zip(
                cfg.simulators, p.enginesim, p.enginesim_metrics, kv, replay, strict=True
            )
        ]
        names = [s.name for s in cfg.simulators] + [t.name for t in (*cfg.tritons, *cfg.openai_engines)]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise StackError(f"engine names {clash} are used twice (simulators, --triton, --openai-engine)")
        if not self.sims and not cfg.tritons and not cfg.openai_engines:
            raise StackError(
                "no engines: keep the simulators or name your servers with --triton / --openai-engine"
            )

    # --- start -----------------------------------------------------------------------------
    def start(self) -> None:
        busy = [b for b in ports_in_use(self.cfg.ports) if self.cfg.prometheus or "(prometheus)" not in b]
        if busy:
            raise StackError(
                "cannot start: " + ", ".join(busy) + " already in use. Stop what holds them "
                "(another `harness up`?) or choose other ports (--free-ports)"
                + (
                    ", or start without Prometheus (--no-prometheus)."
                    if any("(prometheus)" in b for b in busy)
                    else "."
                )
            )
        if self.cfg.prometheus:  # before anything starts: say what is missing, or how to go without
            try:
                prom.prometheus_binary()
            except FileNotFoundError as exc:
                raise StackError(str(exc)) from None
            lo, hi = prom.MIN_SCRAPE_S, prom.MAX_SCRAPE_S
            if not lo <= self.cfg.prometheus_scrape_s <= hi:
                raise StackError(f"--prometheus-scrape-interval must be {lo:g} to {hi:g} seconds")
        for d in (self.paths.root, self.paths.logs, self.paths.state):
            d.mkdir(parents=True, exist_ok=True)
        agents = [a["name"] for a in self.demo.get("registry", {}).get("agents", [])] or ["demo-agent"]
        self.certs = make_certs(self.paths.certs, agents=agents, services=SERVICES_WITH_CERTS)
        try:
            self._start_children()
            asyncio.run(self._wait_and_seed())
        finally:
            self.write_pids()

    def write_pids(self) -> None:
        # For ops and tests: which processes belong to this stack.
        pids = [f"{c.name} {c.proc.pid}\n" for c in self.sup.children if c.proc is not None]
        (self.paths.root / "stack.pids").write_text("".join(pids))

    def _service_flags(self, name: str, port: int, metrics: int) -> list[str]:
        assert self.certs is not None
        leaf = self.certs.services[name]
        return [
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics),
            "--tls-cert", str(leaf.cert), "--tls-key", str(leaf.key), "--tls-ca", str(self.certs.ca_cert),
            "--jwt-public-key", str(self.certs.jwt_public_key),
        ]  # fmt: skip

    def _start_children(self) -> None:
        p, state, logs = self.cfg.ports, self.paths.state, self.paths.logs
        self.sup.start(demo_tools.ledger_child(p.demo_ledger, logs))
        for i, sim in enumerate(self.sims):
            argv = _py("services.enginesim", *sim.argv(self.cfg.time_scale, self.cfg.gpu_memory_gb))
            self.sup.start(Child(f"enginesim-{i}", argv, logs / f"enginesim-{i}.log"))
        for name, port, metrics in (
            ("registry", p.registry, p.registry_metrics),
            ("audit", p.audit, p.audit_metrics),
            ("cost", p.cost, p.cost_metrics),
        ):
            db = f"sqlite:///{(state / f'{name}.db').resolve()}"
            argv = _py(f"services.{name}", *self._service_flags(name, port, metrics), "--db-url", db)
            if name == "audit":  # signed checkpoints go beside the database, not into it
                argv += ["--witness", str((state / "audit-witness").resolve()),
                         "--witness-key", str((state / "audit-checkpoint.key").resolve())]  # fmt: skip
            if name in ("registry", "cost"):  # admin changes and budget alerts become audit events
                argv += ["--audit", f"127.0.0.1:{p.audit}"]
            if name == "cost":  # the advisor reads the live fleet (pool) and the catalog (registry)
                argv += ["--pool", f"127.0.0.1:{p.pool}", "--registry", f"127.0.0.1:{p.registry}"]
            if name == "audit":  # user tokens follow the registry's JWT settings
                argv += ["--registry", f"127.0.0.1:{p.registry}"]
            self.sup.start(Child(name, argv, logs / f"{name}.log"))
        endpoints = [
            arg
            for sim in self.sims
            for arg in ("--endpoint", sim.endpoint_flag(self.cfg.gpu_type, self.cfg.gpu_memory_gb))
        ]
        endpoints += [arg for t in self.cfg.tritons for arg in ("--endpoint", t.endpoint_flag())]
        endpoints += [arg for o in self.cfg.openai_engines for arg in ("--endpoint", o.endpoint_flag())]
        # The pool follows the registry: agents going online get their models loaded, and the
        # deployable models (and their memory) are the registry's catalog.
        pool = _py(
            "services.pool", *self._service_flags("pool", p.pool, p.pool_metrics), *endpoints,
            "--registry", f"127.0.0.1:{p.registry}", "--audit", f"127.0.0.1:{p.audit}",
            "--db-url", f"sqlite:///{(self.paths.state / 'pool.db').resolve()}",
        )  # fmt: skip
        self.sup.start(Child("pool", pool, logs / "pool.log"))
        for i, (port, metrics, http) in enumerate(
            zip(p.routers, p.router_metrics, p.router_http, strict=True)
        ):
            argv = _py(
                "services.router", *self._service_flags("router", port, metrics), "--http-port", str(http),
                "--registry", f"127.0.0.1:{p.registry}", "--pool", f"127.0.0.1:{p.pool}",
                "--audit", f"127.0.0.1:{p.audit}", "--cost", f"127.0.0.1:{p.cost}",
                "--outbox", str((state / f"router-{i + 1}-outbox.db").resolve()),
                "--redaction-key-file", str(self._redaction_key_file()),
            )  # fmt: skip
            if self.cfg.redis_url:
                argv += ["--redis", self.cfg.redis_url, "--redis-prefix", self.redis_prefix]
            argv += [  # headers and TLS of the user's engines (the pool keeps its own copy)
                a
                for o in (*self.cfg.openai_engines, *self.cfg.tritons)
                if o.router_flag()
                for a in ("--engine-access", o.router_flag())
            ]
            self.sup.start(Child(f"router-{i + 1}", argv, logs / f"router-{i + 1}.log"))

    @property
    def redis_prefix(self) -> str:
        return redis_prefix_for(self.paths.root)

    def _redaction_key_file(self) -> Path:
        """The HMAC key of hash-mode PII redaction, shared by both routers (made once, 0600)."""
        path = self.paths.state / "redaction.key"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32))
        return path.resolve()

    def _envoy_spec(self) -> EnvoySpec:
        assert self.certs is not None
        p = self.cfg.ports
        local = "127.0.0.1"
        return EnvoySpec(
            listen_host=self.cfg.listen_host,
            listen_port=p.envoy,
            admin_port=p.envoy_admin,
            key_listen_port=p.envoy_keys,
            certs=EnvoyCerts(self.certs.ca_cert, self.certs.envoy.cert, self.certs.envoy.key),
            upstreams={
                "router": [(local, port) for port in p.routers],
                "router_http": [(local, port) for port in p.router_http],
                "registry": [(local, p.registry)],
                "pool": [(local, p.pool)],
                "audit": [(local, p.audit)],
                "cost": [(local, p.cost)],
            },
            trust_domain=self.certs.trust_domain,
            http_routes=DEFAULT_HTTP_ROUTES,
            idempotent_methods=idempotent_unary_methods(),
        )

    def _start_envoy(self) -> None:
        write_envoy_config(
            self._envoy_spec(),
            self.paths.envoy_config,
            header="# Rendered by `harness up`; edits are overwritten.\n",
        )
        envoy = str(Path(sys.executable).parent / "envoy")
        argv = [
            envoy, "-c", str(self.paths.envoy_config), "--use-dynamic-base-id",
            "--log-level", "warn", "--drain-time-s", "2", "--parent-shutdown-time-s", "3",
        ]  # fmt: skip
        self.sup.start(Child("envoy", argv, self.paths.logs / "envoy.log"))
        self.write_pids()

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.ports.prometheus}"

    def _start_prometheus(self) -> None:
        jobs = prom.stack_jobs(self.cfg.ports, [(sim.spec.name, sim.metrics_port) for sim in self.sims])
        config = self.paths.root / "prometheus.yml"
        prom.write_config(prom.render_config(jobs, self.cfg.prometheus_scrape_s), config)
        self.sup.start(
            prom.prometheus_child(
                self.paths.root.resolve(), self.cfg.ports.prometheus, config.resolve(), self.paths.logs
            )
        )
        self.write_pids()

    # --- wait --------------------------------------------------------------------------------
    # --- after start -------------------------------------------------------------------------
    def write_env(self) -> dict[str, str]:
        """Writes .harness/env (and the demo users' tokens); returns what it exports."""
        env = stack_env(self)
        self.paths.env_file.write_text(env_file_text(env))
        return env

    def banner(self, env: dict[str, str]) -> str:
        shared = (self.cfg.redis_url, self.redis_prefix) if self.cfg.redis_url else None
        extra = [demo_tools.banner_line(self.cfg.ports.demo_ledger)]
        extra += [f"Triton {t.name}: {t.address} (yours; `harness endpoints list`)" for t in self.cfg.tritons]
        extra += [
            f"OpenAI engine {o.name}: {o.url} ({o.flavour}, yours; `harness endpoints list`)"
            for o in self.cfg.openai_engines
        ]
        extra += self.catalog_lines
        if self.cfg.prometheus:
            extra.append(prom.banner_line(self.prometheus_url))
        return banner(env, self.cfg.ports, self.paths, self.sims, shared, extra)

    def stop(self) -> None:
        self.sup.stop_all()


def run_up(cfg: UpConfig) -> int:
    """Starts the stack, prints how to use it, serves until Ctrl-C/SIGTERM; returns an exit code."""
    stack = Stack(cfg)
    stopping = {"flag": False}

    def on_signal(signum, _frame) -> None:
        stopping["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        stack.start()
        env = stack.write_env()
        print(stack.banner(env), flush=True)
        print(f"healthy in {time.monotonic() - started:.1f}s", flush=True)
        while True:
            for line in stack.sup.restart_exited():
                print(f"harness up: {line}", file=sys.stderr, flush=True)
                stack.write_pids()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping the stack...", flush=True)
        return 0
    except (StackError, RuntimeError) as exc:
        print(f"harness up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not interrupt the cleanup
        stack.stop()
