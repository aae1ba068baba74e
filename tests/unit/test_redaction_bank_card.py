"""bank_card: 16-19 digits, Luhn, issuer digit 2-6 (UnionPay 62 incl. 19 digits), groupings."""

from stdnum import luhn

from services.router.redaction import create


def card(body: str) -> str:
    return body + luhn.calc_check_digit(body)


VISA = card("411111111111111")
UNIONPAY_19 = card("622202123456789012")
UNIONPAY_16 = card("621700123456789")


def find(text: str) -> list[tuple[str, str]]:
    return [(s.value, s.canonical) for s in create("bank_card").find(text)]


def test_valid_cards_in_chinese_and_english() -> None:
    assert find(f"卡号{UNIONPAY_19}付款") == [(UNIONPAY_19, UNIONPAY_19)]
    assert find(f"银行卡：{UNIONPAY_16}，") == [(UNIONPAY_16, UNIONPAY_16)]
    assert find(f"card {VISA}.") == [(VISA, VISA)]


def test_grouped_with_spaces_or_dashes() -> None:
    spaced = " ".join(UNIONPAY_19[i : i + 4] for i in range(0, 19, 4))
    dashed = "-".join(VISA[i : i + 4] for i in range(0, 16, 4))
    assert find(f"卡号{spaced}谢谢") == [(spaced, UNIONPAY_19)]
    assert find(f"({dashed})") == [(dashed, VISA)]


def test_luhn_failure_is_not_flagged_even_with_62_prefix() -> None:
    for good in (VISA, UNIONPAY_16, UNIONPAY_19):
        bad = good[:-1] + str((int(good[-1]) + 1) % 10)
        assert find(f"卡号{bad}付款") == []


def test_lengths_outside_16_19_are_not_flagged() -> None:
    assert find(card("62220212345678")) == []  # 15 digits
    assert find(card("6222021234567890123")) == []  # 20 digits
    assert find(f"{VISA}7") == []  # glued to another digit


def test_luhn_valid_numbers_with_non_financial_first_digit_are_not_flagged() -> None:
    assert find(card("912345678901234")) == []
    assert find(card("112345678901234567")) == []
