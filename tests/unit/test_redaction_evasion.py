"""PII written to slip past the recognizers: full-width digits, a country code without "+",
separators a reader does not see, values glued together or inside longer digit runs, values
in JSON keys and numbers. Each is found, redacted in the original text, and hashes like the
plain form."""

import json

import pytest
from stdnum import luhn

from services.router.redaction import Redactor, StreamRedactor, policy_from_dict
from services.router.redaction.normalize import normalize

ID = "11010519491231002X"
CARD = "622202123456789012" + luhn.calc_check_digit("622202123456789012")
FULL = str.maketrans("0123456789", "０１２３４５６７８９")


def redactor() -> Redactor:
    return Redactor(
        policy_from_dict({"phone": "mask", "bank_card": "mask", "cn_resident_id": "mask", "email": "mask"})
    )


@pytest.mark.parametrize(
    ("text", "redacted", "counts"),
    [
        ("手机" + "13812345678".translate(FULL) + "联系", "手机[PHONE]联系", {"phone": 1}),
        ("call １３８ １２３４ ５６７８ now", "call [PHONE] now", {"phone": 1}),
        ("tel ١٣٨١٢٣٤٥٦٧٨.", "tel [PHONE].", {"phone": 1}),
        ("tel " + "".join(chr(0x1D7CE + int(d)) for d in "13812345678"), "tel [PHONE]", {"phone": 1}),
        ("电话8613512349878请回电", "电话[PHONE]请回电", {"phone": 1}),
        ("号码 86 135 1234 9878。", "号码 [PHONE]。", {"phone": 1}),
        ("手机138\u00a01234\u00a05678", "手机[PHONE]", {"phone": 1}),
        ("手机138\u200b1234\u200b5678。", "手机[PHONE]。", {"phone": 1}),
        ("手机1\u200c3\u200d8\u20601234\ufeff5678!", "手机[PHONE]!", {"phone": 1}),
        ("身份证" + ID.translate(FULL) + "。", "身份证[CN_RESIDENT_ID]。", {"cn_resident_id": 1}),
        (f"资料{ID}13812345678核对", "资料[CN_RESIDENT_ID][PHONE]核对", {"cn_resident_id": 1, "phone": 1}),
        (f"资料13812345678{ID}核对", "资料[PHONE][CN_RESIDENT_ID]核对", {"cn_resident_id": 1, "phone": 1}),
        (f"订单0000{CARD}9999已付", "订单0000[BANK_CARD]9999已付", {"bank_card": 1}),
        (f"ref 12{CARD}", "ref 12[BANK_CARD]", {"bank_card": 1}),
        ("卡号" + CARD.translate(FULL), "卡号[BANK_CARD]", {"bank_card": 1}),
    ],
)
def test_evasive_forms_are_found_and_redacted_in_the_original_text(text, redacted, counts) -> None:
    out = redactor().redact(text)
    assert (out.text, out.counts) == (redacted, counts)


def test_folded_values_hash_like_their_plain_form() -> None:
    r = Redactor(policy_from_dict({"phone": "hash", "cn_resident_id": "hash"}), key="k")
    plain = r.redact("13812345678").text
    assert r.redact("13812345678".translate(FULL)).text == plain
    assert r.redact("138\u200b1234\u00a05678").text == plain
    assert r.redact("8613812345678").text == plain


def test_text_outside_values_is_released_exactly_as_it_came() -> None:
    text = "Ｈｅｌｌｏ\u200b，世界 ١٢٣ and １３８１２３４５６７８\u00a0end\u200d"
    out = redactor().redact(text).text
    assert out == "Ｈｅｌｌｏ\u200b，世界 ١٢٣ and [PHONE]\u00a0end\u200d"


def test_normalize_maps_positions_back_to_the_original() -> None:
    folded = normalize("a\u200bb１\u200c\u200d2")
    assert folded.text == "ab12" and folded.changed
    assert [folded.start(i) for i in range(4)] == [0, 2, 3, 6]
    assert [folded.end(i) for i in range(1, 5)] == [1, 3, 4, 7]
    assert not normalize("plain ascii 138").changed and not normalize("中文，标点。").changed


def test_long_digit_runs_without_a_value_are_left_alone() -> None:
    assert redactor().redact("交易号 9" * 3 + "1" * 40).counts == {}
    no_issuer = "1" * 5 + "7" * 20 + "8" * 5  # no 2-6 issuer digit: no card window
    assert redactor().redact(no_issuer).counts == {}


def test_json_keys_and_numbers_are_redacted_for_the_audit_log() -> None:
    args = {
        "13812345678": "owner",
        "phone": 13987654321,
        "as_double": 13987654321.0,  # protobuf Struct numbers arrive as doubles
        "card": int(CARD),
        "amount": 1380,
        "ratio": 0.5,
        "flag": True,
        "nested": [{"8613512349878": [15012345678]}],
    }
    out, counts = redactor().redact_json(args)
    assert out == {
        "[PHONE]": "owner",
        "phone": "[PHONE]",
        "as_double": "[PHONE]",
        "card": "[BANK_CARD]",
        "amount": 1380,
        "ratio": 0.5,
        "flag": True,
        "nested": [{"[PHONE]": ["[PHONE]"]}],
    }
    assert counts == {"phone": 5, "bank_card": 1}
    for value in ("13812345678", "13987654321", CARD, "8613512349878", "15012345678"):
        assert value not in json.dumps(out)


def test_two_keys_redacted_alike_are_both_kept() -> None:
    out, counts = redactor().redact_json({"13812345678": 1, "13987654321": 2})
    assert sorted(out.values()) == [1, 2] and len(out) == 2 and counts == {"phone": 2}


@pytest.mark.parametrize(
    "value",
    ["13812345678".translate(FULL), "138\u200b1234\u200b5678", "138\u00a01234\u00a05678", "8613512349878"],
)
def test_streaming_holds_back_evasive_forms_split_across_chunks(value: str) -> None:
    r = Redactor(policy_from_dict({"phone": "mask"}))
    for split in range(1, len(value)):
        stream = StreamRedactor(r, holdback=24)
        text = "电话" + value + "，谢谢"
        cut = 2 + split
        out = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.flush()
        assert out == "电话[PHONE]，谢谢", (split, out)


@pytest.mark.parametrize("text", [f"资料{ID}13812345678核对", f"订单0000{CARD}9999已付"])
def test_streaming_finds_values_glued_into_digit_runs_fed_a_character_at_a_time(text: str) -> None:
    r = redactor()
    stream = StreamRedactor(r, holdback=24)
    out = "".join(stream.feed(ch) for ch in text) + stream.flush()
    assert out == r.redact(text).text
