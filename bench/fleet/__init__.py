"""Fleet scenario benchmark: static per-agent GPU binding vs the pooled Harness.

Run it with ``make bench-fleet`` or ``python -m bench.fleet``; ``__main__.py`` describes the
modules and the scales.
"""
