"""email, ipv4, ipv6: CJK context, look-alikes, canonical forms."""

import pytest

from services.router.redaction import create


def find(kind: str, text: str) -> list[tuple[str, str]]:
    return [(s.value, s.key_value) for s in create(kind).find(text)]


def test_email_in_chinese_text_and_canonical_lower_case() -> None:
    assert find("email", "邮箱Zhang.San@Example.COM联系") == [
        ("Zhang.San@Example.COM", "zhang.san@example.com")
    ]
    assert find("email", "mail li_si+crm@mail.example.cn.") == [
        ("li_si+crm@mail.example.cn", "li_si+crm@mail.example.cn")
    ]
    assert find("email", "13812345678@163.com")[0][0] == "13812345678@163.com"


@pytest.mark.parametrize("text", ["user@localhost", "@zhangsan", "a@b", "name at example dot com", "无邮箱"])
def test_email_look_alikes(text: str) -> None:
    assert find("email", text) == []


def test_ipv4() -> None:
    assert find("ipv4", "服务器192.168.1.10宕机") == [("192.168.1.10", "192.168.1.10")]
    assert find("ipv4", "host 8.8.8.8.") == [("8.8.8.8", "8.8.8.8")]


@pytest.mark.parametrize("text", ["256.1.1.1", "1.2.3", "1.2.3.4.5", "v1.2.3.4", "192.168.01"])
def test_ipv4_look_alikes(text: str) -> None:
    assert find("ipv4", text) == []


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        ("地址2001:db8::1宕机", "2001:db8::1", "2001:db8::1"),
        ("信息:2001:db8::8a2e:370:7334", "2001:db8::8a2e:370:7334", "2001:db8::8a2e:370:7334"),
        ("信息:::1", "::1", "::1"),
        (
            "full 2001:0db8:0000:0000:0000:ff00:0042:8329.",
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
            "2001:db8::ff00:42:8329",
        ),
        ("mapped ::ffff:192.0.2.128 ok", "::ffff:192.0.2.128", "::ffff:c000:280"),
        ("[fe80::1ff:fe23:4567:890a]:8080", "fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
    ],
)
def test_ipv6(text: str, value: str, canonical: str) -> None:
    assert find("ipv6", text) == [(value, canonical)]


@pytest.mark.parametrize(
    "text", ["12:30:45", "00:1a:2b:3c:4d:5e", "2001:db8:::1", "1:2:3:4:5:6:7:8:9", "a :: b", "std::vector"]
)
def test_ipv6_look_alikes(text: str) -> None:
    assert find("ipv6", text) == []
