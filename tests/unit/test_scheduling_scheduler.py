"""The Scheduler: filter -> score -> pick per profile, outcomes, and the feedback hooks."""

from __future__ import annotations

from collections import Counter

import pytest

from services.router.scheduling import (
    BATCH,
    REALTIME,
    Candidate,
    Outcome,
    Scheduler,
    SchedulingRequest,
)

FLEET = [Candidate(f"sim-{i}", address=f"10.0.0.{i}:8001", model="llama") for i in range(4)]
SYSTEM = "You are a careful assistant for the billing team. Answer from the context only. " * 20


def test_pick_returns_an_endpoint_with_scores_per_plugin_and_the_profile():
    decision = Scheduler(seed=0).pick(SchedulingRequest("llama", prompt="hi"), FLEET)
    assert decision.ok and decision.outcome is Outcome.PICKED and decision.profile == "default"
    assert decision.endpoint in FLEET and decision.considered == 4
    assert [name for name, _ in decision.scores] == [
        "precise-prefix-cache",
        "queue-depth",
        "kv-cache",
        "session-affinity",
    ]
    assert decision.total == pytest.approx(
        sum(w * s for w, (_, s) in zip((3, 2, 2, 1), decision.scores, strict=True))
    )


def test_no_ready_endpoint_vs_all_saturated():
    s = Scheduler(seed=0)
    req = SchedulingRequest("llama")
    assert s.pick(req, []).outcome is Outcome.NO_READY
    other_model = s.pick(SchedulingRequest("mistral"), FLEET)
    assert (other_model.outcome, other_model.reason, other_model.endpoint) == (
        Outcome.NO_READY,
        "model-ready",
        None,
    )
    sick = [Candidate("a", model="llama", healthy=False)]
    assert s.pick(req, sick).outcome is Outcome.NO_READY
    busy = [Candidate(f"b{i}", model="llama", waiting=50) for i in range(3)]
    full = s.pick(req, busy)
    assert (full.outcome, full.reason, full.ok) == (Outcome.SATURATED, "not-saturated", False)


def test_batch_saturates_before_realtime():
    s = Scheduler(seed=0)
    fleet = [Candidate(f"b{i}", model="llama", waiting=1) for i in range(2)]
    assert s.pick(SchedulingRequest("llama", slo_class=BATCH), fleet).outcome is Outcome.SATURATED
    realtime = s.pick(SchedulingRequest("llama", slo_class=REALTIME), fleet)
    assert realtime.ok and realtime.profile == "low-latency"


def test_shared_prefix_requests_follow_the_endpoint_that_served_the_prefix():
    s = Scheduler(seed=1)
    first = SchedulingRequest("llama", prompt=SYSTEM + "Question from user 1?")
    d = s.pick(first, FLEET)
    s.record(d.endpoint, first)
    for user in range(2, 12):
        req = SchedulingRequest("llama", prompt=SYSTEM + f"Question from user {user}?")
        again = s.pick(req, FLEET)
        assert again.endpoint == d.endpoint and dict(again.scores)["precise-prefix-cache"] > 0.9
        s.record(again.endpoint, req)


def test_a_prefix_moves_on_when_its_endpoint_saturates():
    s = Scheduler(seed=1)
    req = SchedulingRequest("llama", prompt=SYSTEM)
    s.record("sim-0", req)
    fleet = [Candidate("sim-0", model="llama", waiting=9), *FLEET[1:]]
    assert s.pick(req, fleet).endpoint.name != "sim-0"


def test_session_affinity_sticks():
    s = Scheduler(seed=2)
    req = SchedulingRequest("llama", prompt="hello", session_id="conv-42")
    s.record("sim-3", req)
    assert {s.pick(req, FLEET).endpoint.name for _ in range(20)} == {"sim-3"}


def test_without_history_an_idle_fleet_gets_an_even_spread():
    s = Scheduler(seed=3)
    counts = Counter(s.pick(SchedulingRequest("llama", prompt="x"), FLEET).endpoint.name for _ in range(400))
    assert set(counts) == {c.name for c in FLEET} and min(counts.values()) > 50


def test_in_flight_accounting_spreads_load_before_the_pool_sees_it():
    s = Scheduler(seed=4)
    picked = []
    for _ in range(4):
        d = s.pick(SchedulingRequest("llama", prompt="x"), FLEET)
        s.acquire(d.endpoint)
        picked.append(d.endpoint)
    assert sorted(c.name for c in picked) == sorted(c.name for c in FLEET)
    for c in picked:
        s.release(c)
    s.release(FLEET[0])  # an extra release never goes negative
    assert s.memory.inflight == {}


def test_observed_ttft_steers_the_low_latency_profile():
    s = Scheduler(seed=5)
    for c in FLEET:
        s.observe_ttft(c, 0.5)
    s.observe_ttft("sim-2", 0.05)
    s.observe_ttft("sim-2", 0.05)
    d = s.pick(SchedulingRequest("llama", slo_class=REALTIME), FLEET)
    assert d.endpoint.name == "sim-2" and dict(d.scores)["latency"] == 1.0


def test_profile_override_runs_the_baselines():
    s = Scheduler(seed=6)
    req = SchedulingRequest("llama")
    names = [s.pick(req, FLEET, profile="round-robin").endpoint.name for _ in range(5)]
    assert names == ["sim-0", "sim-1", "sim-2", "sim-3", "sim-0"]
    loaded = [Candidate("a", model="llama", active=5), Candidate("b", model="llama", active=1)]
    assert s.pick(req, loaded, profile="least-request").endpoint.name == "b"
    with pytest.raises(KeyError):
        s.pick(req, FLEET, profile="nope")


def test_same_seed_same_decisions():
    def run(seed: int) -> list[str]:
        s = Scheduler(seed=seed)
        return [s.pick(SchedulingRequest("llama"), FLEET).endpoint.name for _ in range(30)]

    assert run(11) == run(11)


def test_weight_zero_scorer_is_skipped():
    raw = {"profiles": {"default": {"scorers": [{"type": "latency", "weight": 0}, "kv-cache"]}}}
    d = Scheduler.from_mapping(raw, seed=0).pick(SchedulingRequest("llama"), FLEET)
    assert [name for name, _ in d.scores] == ["kv-cache"]


def test_forget_drops_memory_of_departed_endpoints():
    s = Scheduler(seed=0)
    req = SchedulingRequest("llama", prompt=SYSTEM)
    s.record("sim-1", req)
    s.acquire(Candidate("sim-1", model="llama"))
    s.acquire(Candidate("sim-2", model="llama"))
    s.observe_ttft("sim-1", 0.2)
    s.forget(["sim-1"])
    assert s.memory.prefix.size("sim-1") == 0 and s.memory.latency.get("sim-1") == 0.0
    assert s.memory.inflight == {("sim-2", "llama"): 1}


def test_given_token_ids_are_hashed_instead_of_the_text():
    s = Scheduler(seed=0)
    ids = list(range(64 * 3))
    s.record("sim-2", SchedulingRequest("llama", tokens=ids))
    d = s.pick(SchedulingRequest("llama", tokens=[*ids[:128], 7, 7, 7]), FLEET)
    assert d.endpoint.name == "sim-2" and dict(d.scores)["precise-prefix-cache"] == 1.0
