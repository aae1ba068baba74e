"""PII corpus (bench/pii_corpus.py): 100% recall on valid values, 0 false positives on
checksum-invalid look-alikes, and no valid value left in the redacted output."""

import pytest

from bench import pii_corpus


@pytest.fixture(scope="module")
def corpus() -> tuple[str, list[pii_corpus.Planted]]:
    return pii_corpus.build_corpus(seed=7, copies=60)


def test_recall_and_false_positives_per_recognizer(corpus) -> None:
    text, planted = corpus
    metrics = pii_corpus.evaluate(text, planted)
    assert set(metrics) == set(pii_corpus.KINDS)
    for kind, m in metrics.items():
        assert m["valid"] == 60 and m["lookalikes"] == 60, kind
        assert m["found"] == m["valid"], f"{kind}: recall {m['found']}/{m['valid']}"
        assert m["false_pos"] == 0, f"{kind}: {m['false_pos']} false positives"


@pytest.mark.parametrize("seed", [7, 11, 2024])
def test_full_redactor_leaves_no_value_and_touches_no_look_alike(seed: int) -> None:
    text, planted = pii_corpus.build_corpus(seed=seed, copies=60)
    assert pii_corpus.check_redaction(text, planted) == []
    out = pii_corpus.full_redactor().redact(text).text
    for p in planted:
        if p.valid:
            assert p.value not in out
            if p.kind == "bank_card":
                assert p.value.replace(" ", "").replace("-", "") not in out
