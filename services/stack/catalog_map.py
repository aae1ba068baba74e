"""The demo catalog on the user's own engines (`harness up --triton` / `--openai-engine`).

The demo's agents pin catalog models (`llama-3-8b` -> Triton model `llama-3-8b-instruct`) that a
user's server most likely does not serve under those names. Before the registry is seeded,
the served model names the pool reports are mapped in:

- without the simulators, each demo catalog generation model that no server of the stack serves is
  pointed (in catalog order) at a served model the catalog does not know (in name order), so
  the demo agents and every README command run on the user's models; the demo agents pin and
  may use each re-pointed model;
- every served model still unknown becomes a catalog model of its own (its name, lowercased
  where the catalog's rules need it), pinned by every demo agent's versions and allowed to them
  by policy, so it can be asked for by name (`model: <served name>` on any front door).

New catalog models carry no memory figure (the pool cannot place them until one is set with
`harness models register`); they are served where the user's servers already load them.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time

from harness.pool.v1 import pool_pb2

_CATALOG_CHARS = re.compile(r"[^a-z0-9._-]")
HEALTHY = pool_pb2.ENDPOINT_HEALTH_HEALTHY


def catalog_name_for(served: str, taken: set[str]) -> str:
    """A valid catalog name (lowercase letters, digits, '.', '_', '-') for a served model name."""
    base = _CATALOG_CHARS.sub("-", served.lower()).lstrip("._-")[:120] or "model"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def map_demo_catalog(demo: dict, served: list[str], keep_demo_models: bool) -> tuple[dict, list[str]]:
    """The demo data with `served` (model names the user's servers report) mapped in, and one
    line per mapping for the banner. `keep_demo_models`: the simulators still serve the demo's
    own models, so nothing is re-pointed."""
    demo = copy.deepcopy(demo)
    registry = demo.setdefault("registry", {})
    catalog: list[dict] = registry.setdefault("models", [])
    known = {m.get("triton_model") or m["name"] for m in catalog}
    unknown = sorted(dict.fromkeys(s for s in served if s not in known))
    lines: list[str] = []
    if not keep_demo_models:
        for model in catalog:
            if (model.get("triton_model") or model["name"]) in served or not unknown:
                continue
            if model.get("kind", "generation") != "generation":
                continue  # an embedding model is never stood in for by a served (generation) one
            target = unknown.pop(0)
            model["triton_model"] = target
            _allow(registry, model["name"])
            lines.append(f"catalog model {model['name']} -> your model {target}")
    taken = {m["name"] for m in catalog}
    for target in unknown:
        name = catalog_name_for(target, taken)
        taken.add(name)
        catalog.append({"name": name, "triton_model": target})
        _allow(registry, name)
        lines.append(f"catalog model {name} = your model {target} (pinned by the demo agents)")
    return demo, lines


def _allow(registry: dict, model: str) -> None:
    """Every demo agent's versions pin `model`, and policy lets each agent use it."""
    policies = registry.setdefault("policies", [])
    for agent in registry.get("agents", []):
        for version in agent.get("versions", []):
            pinned = version.setdefault("models", [])
            if model not in pinned:
                pinned.append(model)
        rule = ["p", f"agent:{agent['name']}", agent["project"], f"model:{model}", "invoke", "allow"]
        if rule not in policies:
            policies.append(rule)


async def served_models(pool, names: set[str], deadline: float) -> list[str] | None:
    """The model names the endpoints `names` report once each is HEALTHY in the pool (`pool`: a
    PoolStub); None when one is still not healthy at `deadline` (the caller's wait says why)."""
    while time.monotonic() < deadline:
        resp = await pool.ListEndpoints(pool_pb2.ListEndpointsRequest(), timeout=1.0)
        eps = {ep.name: ep for ep in resp.endpoints if ep.name in names and ep.health == HEALTHY}
        if set(eps) == names:
            return sorted({m.name for ep in eps.values() for m in ep.models})
        await asyncio.sleep(0.2)
    return None
