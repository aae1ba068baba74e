"""phone: CN mobile/landline and international numbers, found inside Chinese text."""

import pytest

from services.router.redaction import create


def find(text: str) -> list[tuple[str, str]]:
    return [(s.value, s.canonical) for s in create("phone").find(text)]


@pytest.mark.parametrize(
    ("text", "value", "e164"),
    [
        ("请拨打13812345678联系", "13812345678", "+8613812345678"),
        ("手机：138 1234 5678。", "138 1234 5678", "+8613812345678"),
        ("电话138-1234-5678谢谢", "138-1234-5678", "+8613812345678"),
        ("联系+86 138 1234 5678", "+86 138 1234 5678", "+8613812345678"),
        ("号码008613812345678。", "008613812345678", "+8613812345678"),
        ("（+86-13812345678）", "+86-13812345678", "+8613812345678"),
        ("座机010-62345678，", "010-62345678", "+861062345678"),
        ("Office (021) 6234 5678.", "(021) 6234 5678", "+862162345678"),
        ("call +1 201-555-0123 now", "+1 201-555-0123", "+12015550123"),
        ("London +44 20 7946 0958;", "+44 20 7946 0958", "+442079460958"),
        ("东京+81 3-1234-5678的办公室", "+81 3-1234-5678", "+81312345678"),
        ("(+49 30 123456)", "+49 30 123456", "+4930123456"),
    ],
)
def test_formats_and_contexts(text: str, value: str, e164: str) -> None:
    assert find(text) == [(value, e164)]


def test_two_numbers_separated_by_a_space() -> None:
    assert [v for v, _ in find("13812345678 13987654321")] == ["13812345678", "13987654321"]
    assert [v for v, _ in find("主机 10.0.0.1 13812345678")] == ["13812345678"]


@pytest.mark.parametrize(
    "text",
    [
        "1381234567",  # 10 digits
        "138123456789",  # 12 digits
        "12012345678",  # no such mobile prefix
        "日期2024-06-01",
        "订单号2024060112345",
        "金额1,380,000元",
        "192.168.1.10",
        "19271158144"[:3] + ".71.158.144",  # IPv4 whose digits spell a valid mobile
        "415.555.2671",  # national US format without country code: ambiguous, not taken
        "tel13812345678",  # glued to ASCII letters: an identifier
        "6235 1371 1588 9820 493",  # card-shaped group run, no phone inside
    ],
)
def test_not_phone_numbers(text: str) -> None:
    assert find(text) == []
