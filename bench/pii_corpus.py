"""PII corpus: recall and false positives per recognizer, and the Redactor's speed.

Builds a mixed English + Chinese corpus (seeded, reproducible) with valid values generated
with correct check digits (resident IDs, Luhn cards), phone numbers in several formats,
emails and IPs, plus look-alikes that fail their checks (wrong check digit, impossible or
future birth date, unknown region, bad Luhn, wrong lengths, dates, versions, MACs...). Values
are glued to CJK characters on either side in many sentences.

Per recognizer, run alone: recall = valid values of its kind found with the exact span;
false positives = spans over a look-alike or over plain text. Spans inside a valid value of
another kind (a phone inside "13812345678@163.com") are reported as "nested": overlap
resolution gives them to the longer value. Then the full Redactor (all kinds, hash mode)
must redact every valid value, touch no look-alike, and leave no valid value in its output.

Usage: python bench/pii_corpus.py [--seed 7] [--copies 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from stdnum import luhn
from stdnum.cn import ric

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.router.redaction import Redactor, create, policy_from_dict
from services.router.redaction.checksummed import is_valid_cn_resident_id

KINDS = ("cn_resident_id", "bank_card", "phone", "email", "ipv4", "ipv6")
REGIONS = ("110101", "310101", "440305", "330106", "510107", "320102", "420106", "610113", "810000")
TEMPLATES = (
    "客户身份证号{v}请核实。",
    "请联系{v}确认订单",
    "My contact is {v}, please reach out.",
    "付款卡号：{v}，金额1,380元。",
    "服务器{v}宕机了，请检查。",
    "The value ({v}) was found in the log.",
    "信息:{v}",
    "Forwarded: {v}\t(see ticket)",
)
FILLER = (
    "会议定于2024年6月1日下午3点在3楼召开。",
    "Version 3.11.4 was released on 2024-06-01 at 12:30:45.",
    "订单号 #2024060112345 已发货，运费12.50元。",
    "The quarterly revenue grew 12.5% to 1,380,000 USD.",
    "请在 std::vector 中保存结果，比例为 10:1:2。",
    "Call the function f(x) = 3x + 2 with x in [0, 100].",
)


@dataclass(frozen=True)
class Planted:
    kind: str
    value: str
    valid: bool
    start: int
    end: int


def _id(r: random.Random, valid: bool) -> str:
    while True:
        born = dt.date(1950, 1, 1) + dt.timedelta(days=r.randrange(20000))
        body = f"{r.choice(REGIONS)}{born:%Y%m%d}{r.randrange(1000):03d}"
        bad = r.choice(("check", "date", "future", "region")) if not valid else ""
        if bad == "date":
            body = body[:10] + r.choice(("1332", "0230", "0000", "0431")) + body[14:]
        elif bad == "future":
            body = body[:6] + "2099" + body[10:]
        elif bad == "region":
            body = r.choice(("990101", "000000", "190101", "720101")) + body[6:]
        check = ric.calc_check_digit(body + "0")
        if bad == "check":
            check = r.choice([c for c in "0123456789X" if c != check])
        value = body + check
        # A look-alike that is also a Luhn-valid 2-6 number IS a well-formed card number: skip.
        if valid or not (value.isdigit() and value[0] in "23456" and luhn.is_valid(value)):
            assert is_valid_cn_resident_id(value) == valid, value
            return value.lower() if value.endswith("X") and r.random() < 0.3 else value


def _card(r: random.Random, valid: bool) -> str:
    prefix, length = r.choice(
        (("4", 16), ("53", 16), ("2221", 16), ("62", 16), ("62", 19), ("6011", 16), ("35", 16))
    )
    body = prefix + "".join(r.choice("0123456789") for _ in range(length - len(prefix) - 1))
    check = luhn.calc_check_digit(body)
    digits = body + (check if valid else str((int(check) + r.randrange(1, 10)) % 10))
    style = r.randrange(3)
    if style == 0:
        return digits
    sep = " " if style == 1 else "-"
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _phone(r: random.Random) -> str:
    if r.random() < 0.55:  # CN mobile, several formats
        n = f"{r.choice(('138', '139', '186', '150', '177', '199', '135'))}{r.randrange(10**8):08d}"
        fmt = r.randrange(6)
        out = (
            n,
            f"{n[:3]} {n[3:7]} {n[7:]}",
            f"{n[:3]}-{n[3:7]}-{n[7:]}",
            f"+86 {n[:3]} {n[3:7]} {n[7:]}",
            f"+86-{n}",
            f"0086{n}",
        )[fmt]
    elif r.random() < 0.4:  # CN landline with trunk prefix
        out = r.choice(
            (
                f"010-{r.randrange(2, 9)}{r.randrange(10**7):07d}",
                f"(021) 6{r.randrange(10**3):03d} {r.randrange(10**4):04d}",
                f"0755-8{r.randrange(10**3):03d} {r.randrange(10**4):04d}",
            )
        )
    else:  # international, from phonenumbers' example numbers
        region = r.choice(("US", "GB", "DE", "JP", "SG", "FR", "AU", "HK", "TW"))
        ex = phonenumbers.example_number_for_type(
            region, r.choice((PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE))
        )
        out = phonenumbers.format_number(ex, PhoneNumberFormat.INTERNATIONAL)
    assert phonenumbers.is_valid_number(phonenumbers.parse(out, "CN")), out
    return out


def _email(r: random.Random) -> str:
    user = r.choice(
        (
            "zhang.san",
            "li_si+crm",
            "WANG.Wu",
            f"{r.choice(('138', '186'))}{r.randrange(10**8):08d}",
            "ops-team",
        )
    )
    return f"{user}{r.randrange(100)}@{r.choice(('example.com', 'mail.example.cn', '163.com', 'corp.Example.ORG'))}"


def _ipv4(r: random.Random) -> str:
    return ".".join(
        str(x)
        for x in (
            r.choice((10, 172, 192, 8, 203, 101)),
            r.randrange(256),
            r.randrange(256),
            r.randrange(1, 255),
        )
    )


def _ipv6(r: random.Random) -> str:
    h = [f"{r.randrange(1, 65536):x}" for _ in range(8)]
    return r.choice(
        (
            "2001:db8::" + h[0],
            ":".join(h),
            f"fe80::{h[1]}:{h[2]}",
            f"::ffff:{_ipv4(r)}",
            f"2001:db8:{h[3]}::{h[4]}:1",
        )
    )


LOOKALIKES = {
    "phone": lambda r: r.choice(
        (
            f"138{r.randrange(10**7):07d}",
            f"138{r.randrange(10**9):09d}",
            f"12{r.randrange(10**9):09d}",
            "+86 138 1234",
            f"2024-0{r.randrange(1, 10)}-1{r.randrange(10)}",
            "415.555.2671",
        )
    ),
    "email": lambda r: r.choice(("user@localhost", "@zhangsan", "name at example dot com", "a@b")),
    "ipv4": lambda r: r.choice(("256.1.1.1", "1.2.3", "1.2.3.4.5", "300.168.1.1", "192.168.01")),
    "ipv6": lambda r: r.choice(("12:30:45", "00:1a:2b:3c:4d:5e", "2001:db8:::1", "1:2:3:4:5:6:7:8:9", "::")),
}
VALID = {"phone": _phone, "email": _email, "ipv4": _ipv4, "ipv6": _ipv6}


def build_corpus(seed: int = 7, copies: int = 40) -> tuple[str, list[Planted]]:
    r = random.Random(seed)
    items: list[tuple[str, str, bool]] = []
    for _ in range(copies):
        items += [("cn_resident_id", _id(r, True), True), ("cn_resident_id", _id(r, False), False)]
        items += [("bank_card", _card(r, True), True), ("bank_card", _card(r, False), False)]
        for kind, gen in VALID.items():
            items += [(kind, gen(r), True), (kind, LOOKALIKES[kind](r), False)]
    r.shuffle(items)
    parts: list[str] = []
    planted: list[Planted] = []
    pos = 0
    for kind, value, valid in items:
        before, after = r.choice(TEMPLATES).split("{v}")
        filler = r.choice(FILLER) if r.random() < 0.3 else ""
        start = pos + len(filler) + len(before)
        planted.append(Planted(kind, value, valid, start, start + len(value)))
        chunk = filler + before + value + after + "\n"
        parts.append(chunk)
        pos += len(chunk)
    return "".join(parts), planted


def evaluate(text: str, planted: list[Planted]) -> dict[str, dict[str, int]]:
    """Per kind: valid, found (exact span), false_pos, nested (inside another kind's value)."""
    out = {}
    for kind in KINDS:
        spans = list(create(kind).find(text))
        exact = {(s.start, s.end) for s in spans}
        valid = [p for p in planted if p.kind == kind and p.valid]
        fp = nested = 0
        for s in spans:
            hits = [p for p in planted if p.start < s.end and s.start < p.end]
            if any(p.kind == kind and p.valid and (p.start, p.end) == (s.start, s.end) for p in hits):
                continue
            if hits and all(p.valid and p.start <= s.start and s.end <= p.end for p in hits):
                nested += 1
            else:
                fp += 1
        found = sum((p.start, p.end) in exact for p in valid)
        lookalikes = sum(1 for p in planted if p.kind == kind and not p.valid)
        out[kind] = {
            "valid": len(valid),
            "found": found,
            "lookalikes": lookalikes,
            "false_pos": fp,
            "nested": nested,
        }
    return out


def full_redactor(key: str = "bench-key") -> Redactor:
    return Redactor(policy_from_dict(dict.fromkeys(KINDS, "hash")), key=key)


def check_redaction(text: str, planted: list[Planted]) -> list[str]:
    """Problems with the full Redactor's output ([] when none)."""
    red = full_redactor()
    spans = red.find(text)
    out = red.redact(text).text
    by_span = {(s.start, s.end): s.kind for s in spans}
    problems = [f"missed {p.kind}" for p in planted if p.valid and by_span.get((p.start, p.end)) != p.kind]
    problems += [
        f"touched {p.kind} look-alike"
        for p in planted
        if not p.valid and any(s.start < p.end and p.start < s.end for s in spans)
    ]
    problems += [f"{p.kind} value left in output" for p in planted if p.valid and p.value in out]
    return problems


def micros_per_kb(red: Redactor, text: str, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        red.redact(text)
        best = min(best, time.perf_counter() - t)
    return best * 1e6 / (len(text.encode()) / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--copies", type=int, default=200, help="valid values and look-alikes per kind")
    a = ap.parse_args()
    text, planted = build_corpus(a.seed, a.copies)
    print(f"corpus: {len(text)} chars, {len(text.encode()) / 1024:.0f} KB, {len(planted)} planted values")
    print(
        f"{'recognizer':<16}{'valid':>7}{'found':>7}{'recall':>9}{'look-alikes':>13}{'false pos':>11}{'nested':>8}"
    )
    for kind, m in evaluate(text, planted).items():
        recall = 100 * m["found"] / m["valid"] if m["valid"] else 100.0
        print(
            f"{kind:<16}{m['valid']:>7}{m['found']:>7}{recall:>8.1f}%{m['lookalikes']:>13}{m['false_pos']:>11}{m['nested']:>8}"
        )
    problems = check_redaction(text, planted)
    print(f"full redactor: {len(problems)} problems" + (f" e.g. {problems[:5]}" if problems else ""))
    red = full_redactor()
    clean = "".join(FILLER) * 40 + "今天天气很好，我们讨论一下下个季度的计划和预算安排。" * 40
    print(
        f"speed, all kinds: {micros_per_kb(red, text):.0f} us/KB on the corpus (dense PII), "
        f"{micros_per_kb(red, clean):.0f} us/KB on number-heavy text without PII"
    )
    for kind in KINDS:
        one = Redactor(policy_from_dict({kind: "mask"}))
        print(
            f"  {kind:<16}{micros_per_kb(one, text):>8.0f} us/KB corpus {micros_per_kb(one, clean):>8.0f} us/KB clean"
        )
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
