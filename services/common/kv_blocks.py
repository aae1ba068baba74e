"""KV-cache block hashes as vLLM computes them, shared by the engine simulator (which caches and
announces blocks under these hashes) and the router (which hashes a request's prompt the same
way to look the blocks up in what each engine announced).

vLLM's chain (``vllm/v1/core/kv_cache_utils.py`` ``hash_block_tokens``): the hash of a full block
is ``H((parent_hash, tuple(block_token_ids), extra_keys))`` where the first block's parent is
``NONE_HASH = H(seed)`` with the seed being the engine's ``PYTHONHASHSEED``, and ``H`` is the
engine's ``--prefix-caching-hash-algo``. Only the CBOR-based ones are reproducible outside the
engine process; this module implements ``sha256_cbor``: SHA-256 of the canonical CBOR encoding
(``vllm/utils/hashing.py``). Block hashes go over the wire (``BlockStored``/``BlockRemoved``) as
the 32 digest bytes, or, with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``, as the low 64 bits
(``int.from_bytes(digest, "big") & (2**64 - 1)``); ``external_hash`` maps either form to that
64-bit int, as llm-d's kv-cache indexer does, and the index keys on it.

``sim_token_ids`` is the simulator's tokenizer (a regex split, ids from a stable hash of each
token's text). A real engine needs its model's own tokenizer on the router's side instead.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import cbor2

MASK64 = (1 << 64) - 1
HASH_ALGO = "sha256_cbor"

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_TOKEN_IDS: dict[str, int] = {}
_TOKEN_IDS_MAX = 1 << 20  # distinct token strings remembered (bounded: prompts are user input)


def sha256_cbor(value: object) -> bytes:
    """vLLM's ``sha256_cbor``: SHA-256 of the canonical CBOR encoding (tuples encode as arrays)."""
    return hashlib.sha256(cbor2.dumps(value, canonical=True)).digest()


def none_hash(seed: str) -> bytes:
    """The parent hash of a chain's first block, for an engine started with PYTHONHASHSEED=seed."""
    return sha256_cbor(seed)


def external_hash(value: bytes | int) -> int:
    """A block hash as published (digest bytes or an int) -> the 64-bit int the index keys on."""
    if isinstance(value, int):
        return value & MASK64
    return int.from_bytes(value[-8:], "big")


def _chunk_token_ids(text: str) -> tuple[int, ...]:
    ids = _TOKEN_IDS
    out = []
    for tok in _TOKEN_RE.findall(text):
        i = ids.get(tok)
        if i is None:
            i = int.from_bytes(hashlib.blake2b(tok.encode("utf-8", "surrogatepass"), digest_size=4).digest())
            i &= 0x7FFFFFFF
            if len(ids) < _TOKEN_IDS_MAX:
                ids[tok] = i
        out.append(i)
    return tuple(out)


_CHUNK_CHARS = 512
_CHUNKS: OrderedDict[str, tuple[int, ...]] = OrderedDict()
_CHUNKS_MAX = 32768  # ~16 MiB of text at most


def sim_text_chunks(text: str) -> Iterator[tuple[str, int]]:
    """``text`` cut where :func:`sim_token_ids` cuts it: (chunk, offset in ``text`` after it).
    No token contains a space, so a chunk ends after the first space past ``_CHUNK_CHARS``
    characters: prompts that share a prefix are cut the same way along it."""
    start, n = 0, len(text)
    while start < n:
        cut = text.find(" ", start + _CHUNK_CHARS)
        end = n if cut < 0 else cut + 1
        yield text[start:end], end
        start = end


def sim_chunk_ids(chunk: str) -> tuple[int, ...]:
    """The token ids of one chunk from :func:`sim_text_chunks`, remembered in a bounded LRU."""
    chunks = _CHUNKS
    ids = chunks.get(chunk)
    if ids is None:
        ids = chunks[chunk] = _chunk_token_ids(chunk)
        if len(chunks) > _CHUNKS_MAX:
            chunks.popitem(last=False)
    else:
        chunks.move_to_end(chunk)
    return ids


def sim_token_ids(text: str) -> list[int]:
    """The engine simulator's token ids of ``text`` (``\\w+`` runs and single punctuation marks;
    a token's id is a stable 31-bit hash of its text, so every process agrees).

    Prompts that share a long prefix are tokenized once: the text is cut in chunks (the same
    cuts for the same prefix, :func:`sim_text_chunks`) and each chunk's ids are remembered. The
    ids depend on the text alone and never leave the process."""
    out: list[int] = []
    for chunk, _ in sim_text_chunks(text):
        out.extend(sim_chunk_ids(chunk))
    return out


def count_sim_tokens(text: str) -> int:
    """How many tokens :func:`sim_token_ids` finds in ``text`` (a C regex scan, no ids made)."""
    return len(_TOKEN_RE.findall(text))


class BlockHasher:
    """Chained block hashes of token-id sequences, for one (seed, block size).

    Hashing one block costs a CBOR encode and a SHA-256 (~5-10 us in CPython); prompts that share
    a prefix share its blocks, so (parent, block tokens) -> hash is memoised in a bounded LRU.
    """

    def __init__(self, block_size: int, seed: str = "0", memo_blocks: int = 200_000) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.seed = seed
        self.root = none_hash(seed)
        self._memo: OrderedDict[tuple[bytes, tuple[int, ...]], bytes] = OrderedDict()
        self._memo_max = memo_blocks

    def digest(self, parent: bytes, block: tuple[int, ...]) -> bytes:
        """The digest of ``block`` (a full block's token ids) chained after ``parent``."""
        memo = self._memo
        key = (parent, block)
        digest = memo.get(key)
        if digest is None:
            digest = memo[key] = sha256_cbor((parent, block, None))
            if len(memo) > self._memo_max:
                memo.popitem(last=False)
        return digest

    def digests(self, token_ids: Sequence[int], max_blocks: int = 0) -> list[bytes]:
        """Digest of every full block of ``token_ids`` (a partial last block has none)."""
        bs = self.block_size
        n = len(token_ids) // bs
        if max_blocks > 0:
            n = min(n, max_blocks)
        out = []
        parent = self.root
        for i in range(n):
            parent = self.digest(parent, tuple(token_ids[i * bs : (i + 1) * bs]))
            out.append(parent)
        return out

    def hashes(self, token_ids: Sequence[int], max_blocks: int = 0) -> tuple[int, ...]:
        """The 64-bit external hashes of ``token_ids``' full blocks (what the index keys on)."""
        return tuple(int.from_bytes(d[-8:], "big") for d in self.digests(token_ids, max_blocks))
