"""`harness up --triton`/`--openai-engine`: the demo catalog mapped onto the models the user's
servers report, so the demo agents run on them and every served model can be asked for by name."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.stack.catalog_map import catalog_name_for, map_demo_catalog

DEMO = yaml.safe_load((Path(__file__).parents[2] / "compose" / "demo.yaml").read_text())


def catalog(demo: dict) -> dict[str, str]:
    return {m["name"]: m["triton_model"] for m in demo["registry"]["models"]}


def pins(demo: dict, agent: str = "demo-agent") -> list[list[str]]:
    a = next(a for a in demo["registry"]["agents"] if a["name"] == agent)
    return [v["models"] for v in a["versions"]]


def test_without_simulators_the_demo_models_move_onto_the_users_models():
    demo, lines = map_demo_catalog(
        DEMO, ["ensemble", "Mistral_7B.v2", "tensorrt_llm"], keep_demo_models=False
    )
    # Catalog order onto name order: the agents' default model is served by the user's first one.
    assert catalog(demo) == {
        "llama-3-8b": "Mistral_7B.v2",
        "llama-3-8b-awq": "ensemble",
        "llama-3-70b-awq": "tensorrt_llm",
        "all-minilm-l6-v2": "all-minilm-l6-v2",  # an embedding model: not re-pointed
    }
    assert lines[0] == "catalog model llama-3-8b -> your model Mistral_7B.v2"
    assert all({"llama-3-8b", "llama-3-8b-awq", "llama-3-70b-awq"} <= set(p) for p in pins(demo))
    rule = ["p", "agent:risk-agent", "ledger", "model:llama-3-70b-awq", "invoke", "allow"]
    assert rule in demo["registry"]["policies"]
    assert catalog(DEMO)["llama-3-8b"] == "llama-3-8b-instruct"  # the input is left alone


def test_served_models_beyond_the_demo_catalog_get_their_own_names():
    served = ["llama-3-8b-instruct", "Qwen2.5-7B", "a/b", "qwen2.5-7b", "z"]
    demo, _ = map_demo_catalog(DEMO, served, keep_demo_models=False)
    got = catalog(demo)
    assert got["llama-3-8b"] == "llama-3-8b-instruct"  # served under the catalog's own name: kept
    assert (got["llama-3-8b-awq"], got["llama-3-70b-awq"]) == ("Qwen2.5-7B", "a/b")
    assert (got["qwen2.5-7b"], got["z"]) == ("qwen2.5-7b", "z")  # the rest under their own names
    assert {"qwen2.5-7b", "z"} <= set(pins(demo, "ledger-rpa")[0])
    clash, _ = map_demo_catalog(DEMO, ["Qwen2.5-7B", "qwen2.5-7b"], keep_demo_models=True)
    assert (catalog(clash)["qwen2.5-7b"], catalog(clash)["qwen2.5-7b-2"]) == ("Qwen2.5-7B", "qwen2.5-7b")


def test_beside_the_simulators_nothing_is_repointed():
    demo, lines = map_demo_catalog(DEMO, ["ensemble"], keep_demo_models=True)
    got = catalog(demo)
    assert got["llama-3-8b"] == "llama-3-8b-instruct" and got["ensemble"] == "ensemble"
    assert lines == ["catalog model ensemble = your model ensemble (pinned by the demo agents)"]
    assert all("ensemble" in p for p in pins(demo))
    assert map_demo_catalog(DEMO, [], keep_demo_models=False) == (DEMO, [])


def test_catalog_names_follow_the_catalogs_rules():
    assert catalog_name_for("Llama 3/8B", set()) == "llama-3-8b"
    assert catalog_name_for("_x", {"x"}) == "x-2"
    assert catalog_name_for("!!!", set()) == "model"
