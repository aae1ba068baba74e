"""StreamRedactor: a value split across chunks is still redacted; output equals one-shot."""

import random

from services.router.redaction import Redactor, StreamRedactor, policy_from_dict

TEXT = "客户手机13812345678，邮箱zhang.san@example.com，服务器10.0.0.1。" * 8


def test_chunked_output_equals_one_shot() -> None:
    r = Redactor(policy_from_dict({"phone": "hash", "email": "mask", "ip": "drop"}), key="k")
    want = r.redact(TEXT)
    rnd = random.Random(1)
    for _ in range(20):
        s = StreamRedactor(r, holdback=64)
        pos, out = 0, []
        while pos < len(TEXT):
            n = rnd.randint(1, 7)
            out.append(s.feed(TEXT[pos : pos + n]))
            pos += n
        out.append(s.flush())
        assert "".join(out) == want.text
        assert dict(s.counts) == want.counts


def test_disabled_redactor_passes_chunks_through() -> None:
    s = StreamRedactor(Redactor(policy_from_dict({})))
    assert s.feed("13812345678") == "13812345678"
    assert s.flush() == ""


def _stream(s: StreamRedactor, text: str, rnd: random.Random) -> list[str]:
    pos, out = 0, []
    while pos < len(text):
        n = rnd.randint(1, 9)
        out.append(s.feed(text[pos : pos + n]))
        pos += n
    return [*out, s.flush()]


def test_the_planted_corpus_streams_exactly_like_one_shot_with_the_router_holdback() -> None:
    """Every built-in kind, 2,400-odd planted values in mixed English and Chinese text, split at
    random points: a value never leaks in pieces, whatever the split."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from pii_corpus import build_corpus, full_redactor

    from services.router.privacy import holdback_for

    text, _ = build_corpus(seed=11, copies=6)
    r = full_redactor()
    assert r.unfinished is not None  # built-ins only: the short, per-kind holdback
    want = r.redact(text)
    rnd = random.Random(3)
    for _ in range(3):
        s = StreamRedactor(r, holdback_for(r))
        assert "".join(_stream(s, text, rnd)) == want.text
        assert dict(s.counts) == want.counts


def test_prose_is_released_at_once_and_only_a_possible_value_is_held() -> None:
    r = Redactor(policy_from_dict({"phone": "mask", "cn_resident_id": "mask", "bank_card": "mask"}))
    s = StreamRedactor(r, holdback=24)
    assert s.feed("Summarise") == "Summarise"  # no digits: nothing here can begin a number
    assert s.feed(" the ledger policy, call 138") == " the ledger policy, call "
    assert s.feed("1234 5678 now") == "[PHONE] now"
    assert s.flush() == ""
    emails = StreamRedactor(Redactor(policy_from_dict({"email": "mask"})), holdback=128)
    assert emails.feed("write to zhang") == "write to "  # a word may begin an address
    assert emails.feed(".san@example.com today") == "[EMAIL] "
    assert emails.flush() == "today"


def test_a_configured_pattern_holds_the_whole_window() -> None:
    r = Redactor(
        policy_from_dict({"employee_id": "mask"}, patterns=[{"name": "employee_id", "regex": r"EMP-\d{6}"}])
    )
    assert r.unfinished is None
    s = StreamRedactor(r, holdback=16)
    assert s.feed("hello there, EMP") == ""  # 16 characters: all held
    assert s.feed("-123456 ok") == "hello ther"
    assert s.flush() == "e, [EMPLOYEE_ID] ok"
