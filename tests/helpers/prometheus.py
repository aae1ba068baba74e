"""Reading /metrics pages in tests with prometheus_client's own parser, the reference reader
(the services read them with services.common.prom_text)."""

from __future__ import annotations


def triton_sample_name(family_type: str, sample_name: str) -> str:
    """The name Triton wrote. Triton types its request counters `counter` without the `_total`
    suffix, and prometheus_client's parser then reports their samples as `..._total`."""
    if family_type == "counter" and sample_name.endswith("_total"):
        return sample_name[: -len("_total")]
    return sample_name
