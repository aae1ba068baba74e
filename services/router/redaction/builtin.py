"""The PII recognizers the engine knows, listed in one place (a data policy names them by kind)."""

from __future__ import annotations

from typing import Any

from services.common.plugins import PluginRegistry

from . import checksummed, contact, network, pattern
from .recognizers import Recognizer

RECOGNIZER = "recognizer"
RECOGNIZERS = PluginRegistry(
    (RECOGNIZER,),
    {
        RECOGNIZER: {
            "cn_resident_id": checksummed.CnResidentId,
            "bank_card": checksummed.BankCard,
            "phone": contact.Phone,
            "email": contact.Email,
            "ipv4": network.IPv4,
            "ipv6": network.IPv6,
            "pattern": pattern.PatternRecognizer,
        }
    },
)


def recognizer_class(name: str) -> type[Recognizer]:
    return RECOGNIZERS.get(RECOGNIZER, name)


def create(name: str, **kwargs: Any) -> Recognizer:
    return recognizer_class(name)(**kwargs)


def registered() -> list[str]:
    return RECOGNIZERS.names(RECOGNIZER)
