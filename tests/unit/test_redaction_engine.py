"""Redactor: modes, keyed hash joins, overlap resolution, counts without values, JSON."""

import re

import pytest
from stdnum import luhn
from stdnum.cn import ric

from services.router.redaction import Redactor, Span, UnknownKindError, policy_from_dict, resolve_overlaps
from services.router.redaction.policy import RedactionPolicy

ID = "11010119900307123" + ric.calc_check_digit("110101199003071230")
CARD = "622202123456789012" + luhn.calc_check_digit("622202123456789012")


def test_mask_mode_uses_typed_placeholders_and_counts_kinds() -> None:
    r = Redactor(policy_from_dict({"cn_resident_id": "mask", "phone": "mask", "email": "mask"}))
    out = r.redact(f"张三{ID}，手机13812345678或13987654321，邮箱a.b@example.com。")
    assert out.text == "张三[CN_RESIDENT_ID]，手机[PHONE]或[PHONE]，邮箱[EMAIL]。"
    assert out.counts == {"cn_resident_id": 1, "phone": 2, "email": 1}
    assert out.total == 4


def test_kinds_not_in_the_policy_are_left_alone() -> None:
    r = Redactor(policy_from_dict({"email": "mask"}))
    assert r.redact("call 13812345678").text == "call 13812345678"
    assert r.redact("call 13812345678").counts == {}


def test_drop_mode_removes_the_value() -> None:
    r = Redactor(policy_from_dict({"phone": "drop"}))
    assert r.redact("电话13812345678。").text == "电话。"


def test_hash_mode_joins_the_same_value_across_formats_and_depends_on_the_key() -> None:
    r = Redactor(policy_from_dict({"phone": "hash"}), key=b"k1")
    a = r.redact("手机13812345678").text
    b = r.redact("tel: +86 138 1234 5678").text
    ha = re.search(r"\[PHONE:hash:([0-9a-f]{16})\]", a).group(1)
    assert b == f"tel: [PHONE:hash:{ha}]"
    other = Redactor(policy_from_dict({"phone": "hash"}), key=b"k2").redact("13812345678").text
    assert ha not in other
    assert "13812345678" not in a


def test_hash_differs_per_kind_and_needs_a_key() -> None:
    r = Redactor(policy_from_dict({"phone": "hash", "email": "hash"}), key="k")
    assert r.keyed_hash("phone", "x") != r.keyed_hash("email", "x")
    with pytest.raises(ValueError, match="key"):
        Redactor(policy_from_dict({"phone": "hash"}))


def test_overlap_longest_wins_email_over_phone() -> None:
    r = Redactor(policy_from_dict({"phone": "mask", "email": "mask"}))
    out = r.redact("邮箱13812345678@163.com谢谢")
    assert (out.text, out.counts) == ("邮箱[EMAIL]谢谢", {"email": 1})


def test_overlap_same_length_more_specific_wins() -> None:
    # An 18-digit resident ID that is also Luhn-valid with a 2-6 first digit: the ID wins.
    bodies = (f"31010119900307{n:03d}" for n in range(1000))
    ids = [v for b in bodies if luhn.is_valid(v := b + ric.calc_check_digit(b + "0"))]
    r = Redactor(policy_from_dict({"bank_card": "mask", "cn_resident_id": "mask"}))
    assert r.redact(f"证件{ids[0]}").text == "证件[CN_RESIDENT_ID]"


def test_resolve_overlaps_is_order_independent() -> None:
    spans = [Span(0, 10, "a", "x"), Span(2, 12, "b", "x"), Span(5, 20, "c", "x"), Span(20, 25, "a", "x")]
    prio = {"a": 1, "b": 2, "c": 0}
    assert resolve_overlaps(spans, prio) == resolve_overlaps(reversed(spans), prio)
    assert [s.kind for s in resolve_overlaps(spans, prio)] == ["c", "a"]
    tie = [Span(0, 10, "a", "x"), Span(0, 10, "b", "x")]
    assert [s.kind for s in resolve_overlaps(tie, prio)] == ["b"]


def test_unknown_kind_fails_closed_unless_not_strict() -> None:
    with pytest.raises(UnknownKindError):
        Redactor(policy_from_dict({"passport": "mask"}))
    r = Redactor(policy_from_dict({"passport": "mask", "email": "mask"}), strict=False)
    assert r.unknown_kinds == ["passport"]
    assert r.redact("a@example.com").text == "[EMAIL]"


def test_ip_alias_and_empty_policy() -> None:
    r = Redactor(policy_from_dict({"ip": "mask"}))
    assert r.redact("10.0.0.1 与 2001:db8::1").text == "[IPV4] 与 [IPV6]"
    empty = Redactor(policy_from_dict({}))
    assert not empty.enabled
    assert empty.redact("13812345678").text == "13812345678"


def test_redact_json_walks_tool_arguments() -> None:
    r = Redactor(policy_from_dict({"phone": "mask", "bank_card": "mask"}))
    args = {"note": "call 13812345678", "cards": [CARD, 5, None], "phone": {"n": "13987654321"}}
    out, counts = r.redact_json(args)
    assert out == {"note": "call [PHONE]", "cards": ["[BANK_CARD]", 5, None], "phone": {"n": "[PHONE]"}}
    assert counts == {"phone": 2, "bank_card": 1}
    assert args["note"] == "call 13812345678"  # input untouched


def test_counts_never_carry_values() -> None:
    r = Redactor(policy_from_dict({"cn_resident_id": "hash"}), key="k")
    res = r.redact(f"ID {ID}")
    assert ID not in repr(res.counts) and ID not in res.text


def test_text_without_any_recognizers_needs_is_not_searched_but_a_pattern_is_always_run() -> None:
    """The engine skips text that matches none of the recognizers' `needs` (no digit for a
    phone or card, no '@' for an email); a configured pattern promises nothing, so with one in
    the policy every text is searched. Folded text counts: a full-width digit is a digit."""
    digits = Redactor(policy_from_dict({"phone": "mask", "bank_card": "mask"}))
    assert digits.find("no numbers in this sentence at all") == []
    assert digits.redact("call １３８１２３４５６７８ now").text == "call [PHONE] now"
    email = Redactor(policy_from_dict({"email": "mask"}))
    assert email.redact("write to alice@example.com").text == "write to [EMAIL]"
    assert email.redact("write to alice at example dot com").counts == {}
    with_pattern = Redactor(
        RedactionPolicy.build([("phone", "mask"), ("codename", "mask")], {"codename": r"Project [A-Z][a-z]+"})
    )
    assert with_pattern.redact("see Project Falcon").text == "see [CODENAME]"
