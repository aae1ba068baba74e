"""Policies from the registry's DataPolicy proto and from plain dicts; configured patterns."""

import pytest
from harness.registry.v1 import registry_pb2 as pb

from services.router.redaction import (
    Mode,
    PatternRecognizer,
    Redactor,
    parse_mode,
    patterns_from_config,
    policy_from_dict,
    policy_from_proto,
)


def test_from_proto_with_unspecified_mode_as_mask_and_ip_alias() -> None:
    dp = pb.DataPolicy(
        pii=[
            pb.PiiRule(kind="phone", mode=pb.MASK_MODE_HASH),
            pb.PiiRule(kind="email"),
            pb.PiiRule(kind="ip", mode=pb.MASK_MODE_DROP),
            pb.PiiRule(kind="cn_resident_id", mode=pb.MASK_MODE_MASK),
        ]
    )
    p = policy_from_proto(dp)
    assert dict(p.rules) == {
        "phone": Mode.HASH,
        "email": Mode.MASK,
        "ipv4": Mode.DROP,
        "ipv6": Mode.DROP,
        "cn_resident_id": Mode.MASK,
    }
    assert policy_from_proto(pb.DataPolicy()).empty


def test_from_proto_with_configured_pattern() -> None:
    dp = pb.DataPolicy(pii=[pb.PiiRule(kind="employee_id", mode=pb.MASK_MODE_MASK)])
    r = Redactor(policy_from_proto(dp, patterns={"employee_id": r"(?<![0-9A-Za-z])EMP-[0-9]{6}(?![0-9])"}))
    assert r.redact("工号EMP-123456已离职").text == "工号[EMPLOYEE_ID]已离职"


def test_from_dict_shapes() -> None:
    flat = policy_from_dict({"phone": "hash", "email": ""})
    assert dict(flat.rules) == {"phone": Mode.HASH, "email": Mode.MASK}
    shaped = policy_from_dict(
        {
            "pii": [{"kind": "contract", "mode": "MASK_MODE_DROP"}],
            "patterns": [{"name": "contract", "regex": "HT-[0-9]+"}],
        }
    )
    assert dict(shaped.rules) == {"contract": Mode.DROP}
    assert Redactor(shaped).redact("合同HT-2024001签署").text == "合同签署"


@pytest.mark.parametrize(
    ("given", "mode"),
    [
        (None, Mode.MASK),
        ("", Mode.MASK),
        (0, Mode.MASK),
        (2, Mode.HASH),
        ("DROP", Mode.DROP),
        ("mask_mode_unspecified", Mode.MASK),
    ],
)
def test_parse_mode(given: object, mode: Mode) -> None:
    assert parse_mode(given) is mode


def test_bad_input_is_rejected_at_load_time() -> None:
    with pytest.raises(ValueError, match="mask mode"):
        parse_mode("shred")
    with pytest.raises(ValueError, match="kind"):
        policy_from_dict({"pii": [{"kind": " "}]})
    with pytest.raises(ValueError, match="invalid regex"):
        patterns_from_config({"bad": "("})
    with pytest.raises(ValueError, match="shadows"):
        Redactor(policy_from_dict({"email": "mask"}, patterns={"phone": "[0-9]+"}))


def test_pattern_value_group_redacts_only_the_value() -> None:
    rec = PatternRecognizer("token", r"token=(?P<value>[A-Za-z0-9]{8,})")
    r = Redactor(policy_from_dict({"token": "mask"}, patterns=[rec]))
    assert r.redact("url?token=abcDEF123456&x=1").text == "url?token=[TOKEN]&x=1"
