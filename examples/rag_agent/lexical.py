"""Lexical terms for the sparse half of hybrid retrieval and for reranking.

English: lower-case words of two or more letters, less a few stop words. Chinese has no spaces,
so every pair of adjacent ideographs is a term (character bigrams, the usual baseline for CJK
search). Terms are hashed to stable ids (CRC-32), so the index needs no vocabulary file.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter

_WORD = re.compile(r"[a-z0-9]{2,}")
_CJK_RUN = re.compile(r"[\u3400-\u9fff]+")
STOP_WORDS = frozenset(
    "the and for are was were what who whom when how does do did can may must with from that this "
    "have has had not any all our your their its into than then there about which will would should "
    "per be is of to in on at by or an as it if".split()
)


def terms(text: str) -> list[str]:
    lowered = text.lower()
    words = [w for w in _WORD.findall(lowered) if w not in STOP_WORDS]
    for run in _CJK_RUN.findall(lowered):
        words += [run[i : i + 2] for i in range(len(run) - 1)] or [run]
    return words


def sparse_vector(text: str) -> tuple[list[int], list[float]]:
    """Term ids and weights (1 + log tf), for Qdrant's sparse vectors."""
    counts = Counter(zlib.crc32(t.encode()) for t in terms(text))
    ids = sorted(counts)
    return ids, [1.0 + math.log(counts[i]) for i in ids]


def coverage(question: str, passage: str) -> float:
    """Share of the question's distinct terms that the passage contains (0..1)."""
    wanted = set(terms(question))
    if not wanted:
        return 0.0
    have = set(terms(passage))
    return len(wanted & have) / len(wanted)
