"""One Prometheus /metrics page read as {(sample name, sorted labels): value}, bounded in size
(`harness top` and `harness up`'s readiness read the services' own pages this way)."""

from __future__ import annotations

import urllib.request

from services.common import prom_text

MAX_METRICS_BYTES = 16 * 1024 * 1024
Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


def scrape(url: str, timeout_s: float = 2.0) -> dict[Key, float]:
    """One /metrics page as {(name, labels): value}; raises OSError/ValueError when unreadable."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        body = r.read(MAX_METRICS_BYTES + 1)
    if len(body) > MAX_METRICS_BYTES:
        raise ValueError(f"{url}: metrics page over {MAX_METRICS_BYTES} bytes")
    out: dict[Key, float] = {}
    for name, labels, value in prom_text.samples(body.decode("utf-8", "replace")):
        out[(name, tuple(sorted(labels.items())))] = value
    return out
