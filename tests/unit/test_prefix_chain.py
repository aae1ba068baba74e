"""The precise prefix scorer's prompt walk (services/router/scheduling/engine_blocks.py): one lazy
walk of the prompt's engine block chain for all endpoints, remembered per text chunk, stopping at
the first block no engine holds. It must score exactly what hashing the whole prompt scores."""

from __future__ import annotations

import random

from services.common.kv_blocks import BlockHasher, sim_chunk_ids, sim_token_ids
from services.common.kv_events_wire import BlockStored, EventBatch
from services.router.scheduling import Scheduler, SchedulingRequest
from services.router.scheduling.memory import MemoryConfig


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices("abcdefghij", k=rng.randint(2, 7))) for _ in range(n))


def holding(memory, block_size: int, held: dict[str, str]) -> list:
    """Entries for endpoints whose engines announced the full blocks of the given texts."""
    hasher = BlockHasher(block_size)
    for name, text in held.items():
        digests = tuple(hasher.digests(sim_token_ids(text)))
        memory.engine_blocks.apply(name, "m", EventBatch(0.0, (BlockStored(digests, None, (), block_size),)))
    return [memory.engine_blocks.live(name, "m") for name in held]


def whole_prompt(entries, block_size: int, tokens, max_blocks: int) -> tuple[list[int], int]:
    hashes = BlockHasher(block_size).hashes(tokens, max_blocks)
    return [e.matched(hashes) for e in entries], len(hashes)


def test_walk_scores_what_hashing_the_whole_prompt_scores():
    rng = random.Random(3)
    shared = words(rng, 700)
    for block_size, max_tokens in ((16, 32_768), (64, 32_768), (16, 320)):
        memory = Scheduler(seed=0).memory
        memory.config = MemoryConfig(kv_events_max_tokens=max_tokens)
        held = {
            "e1": shared,
            "e2": shared[: len(shared) // 3],
            "e3": words(rng, 50),
            "e4": shared + words(rng, 400),
        }
        entries = holding(memory, block_size, held)
        for prompt in (shared + words(rng, 300), shared[:900], held["e4"], "short", words(rng, 200)):
            expected = whole_prompt(entries, block_size, sim_token_ids(prompt), max_tokens // block_size)
            for _ in range(2):  # cold, then from the remembered chunks
                assert (
                    memory.engine_prefix_matches(SchedulingRequest("m", prompt=prompt), entries) == expected
                )
            tokens = sim_token_ids(prompt)
            given = SchedulingRequest("m", tokens=tokens)
            assert memory.engine_prefix_matches(given, entries) == expected


def test_unique_tail_is_counted_not_tokenized():
    rng = random.Random(5)
    shared, tail = words(rng, 600), words(rng, 3000)
    memory = Scheduler(seed=0).memory
    tokenized: list[str] = []
    memory._chunk_ids = lambda chunk: tokenized.append(chunk) or sim_chunk_ids(chunk)
    entries = holding(memory, 16, {"e1": shared, "e2": shared[:1000]})
    prompt = shared + " " + tail
    matched, blocks = memory.engine_prefix_matches(SchedulingRequest("m", prompt=prompt), entries)
    assert (matched, blocks) == whole_prompt(entries, 16, sim_token_ids(prompt), 32_768 // 16)
    assert matched[0] > matched[1] > 0
    assert sum(map(len, tokenized)) < len(shared) + 1100  # the 3,000-word tail: one chunk at most


def test_a_full_chunk_memo_evicts_and_still_hashes_right():
    rng = random.Random(9)
    memory = Scheduler(seed=0).memory
    held = words(rng, 900)
    entries = holding(memory, 16, {"e1": held})
    memory.prompt_chain(SchedulingRequest("m", prompt=held), 16)
    memory._chains[16]._max = 3  # a few chain states remembered: most steps miss, or find an orphan
    prompts = [held[: rng.randrange(500, 4000)] + words(rng, 400) for _ in range(3)]
    for prompt in prompts * 2:
        expected = whole_prompt(entries, 16, sim_token_ids(prompt), 32_768 // 16)
        assert memory.engine_prefix_matches(SchedulingRequest("m", prompt=prompt), entries) == expected
    assert len(memory._chains[16]._states) == 3
