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
