from prometheus_client import CollectorRegistry, Counter

from services.common.metric_children import Children


def _counter() -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    return registry, Counter("calls", "calls", ["agent", "outcome"], registry=registry)


def test_a_child_is_the_metrics_own_and_counts_land_in_the_registry():
    registry, counter = _counter()
    children = Children(counter)
    children("a", "OK").inc()
    children("a", "OK").inc()
    children("b", "OK").inc(3)
    assert children("a", "OK") is counter.labels("a", "OK")
    assert registry.get_sample_value("calls_total", {"agent": "a", "outcome": "OK"}) == 2
    assert registry.get_sample_value("calls_total", {"agent": "b", "outcome": "OK"}) == 3


def test_past_the_limit_the_cache_starts_over_and_counts_stay_right():
    registry, counter = _counter()
    children = Children(counter, limit=2)
    for agent in ("a", "b", "c", "a"):
        children(agent, "OK").inc()
    assert len(children._known) <= 2
    assert registry.get_sample_value("calls_total", {"agent": "a", "outcome": "OK"}) == 2
    assert registry.get_sample_value("calls_total", {"agent": "c", "outcome": "OK"}) == 1
