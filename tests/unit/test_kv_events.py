"""KV-cache events: vLLM's wire format both ways, the router's per-engine block index (store,
evict, clear, bounds, resync), the subscriber's sequence handling (gaps, replay, restarts) and the
precise prefix scorer with its fallback."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest
import zmq.asyncio

from services.common.kv_blocks import BlockHasher, _chunk_token_ids, external_hash, sha256_cbor, sim_token_ids
from services.common.kv_events_wire import (
    ARRAY,
    MAP,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KvEventDecodeError,
    decode_batch,
    encode_batch,
    seq_bytes,
)
from services.enginesim.kv_cache import KvBlockCache
from services.enginesim.kv_events import KvEventPublisher
from services.router.kv_events import KvEventSubscriber, model_of
from services.router.scheduling import Candidate, Scheduler, SchedulingRequest
from services.router.scheduling.engine_blocks import EngineBlockIndex
from services.router.scheduling.scorers import PrecisePrefixCacheScorer, PrefixCacheScorer

D1, D2, D3 = (bytes([i]) * 32 for i in (1, 2, 3))


def stored(*hashes, size=4, parent=None) -> BlockStored:
    return BlockStored(tuple(hashes), parent, tuple(range(size * len(hashes))), size)


# --- the wire format -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [ARRAY, MAP])
def test_batches_round_trip_in_both_encodings(fmt):
    events = [stored(D1, D2), BlockRemoved((D1,)), AllBlocksCleared()]
    batch = decode_batch(encode_batch(events, 12.5, fmt))
    assert batch.ts == 12.5 and batch.data_parallel_rank == 0
    assert batch.events == (stored(D1, D2), BlockRemoved((D1,)), AllBlocksCleared())


def test_the_encodings_are_vllms_positional_arrays_and_tagged_maps():
    arr = msgspec.msgpack.decode(encode_batch([stored(7)], 1.0, ARRAY))
    assert arr == [1.0, [["BlockStored", [7], None, [0, 1, 2, 3], 4, None, "GPU", None]], 0]
    m = msgspec.msgpack.decode(encode_batch([BlockRemoved((7,))], 1.0, MAP))
    assert m == [1.0, [{"type": "BlockRemoved", "block_hashes": [7], "medium": "GPU"}], 0]


def test_the_decoder_takes_newer_fields_omitted_ones_and_a_map_batch():
    enc = msgspec.msgpack.encode
    newer = ["BlockStored", [5], 4, [1, 2], 2, None, "GPU", None, [None], 0, "full_attention"]
    older = ["BlockStored", [b"\x00" * 24 + b"\x00\x00\x00\x00\x00\x00\x00\x09"], None, [1, 2], 2]
    batch = decode_batch(enc({"ts": 3.0, "events": [newer, older, {"type": "AllBlocksCleared"}]}))
    assert batch.events[0] == BlockStored((5,), 4, (1, 2), 2, "GPU", None)
    assert external_hash(batch.events[1].block_hashes[0]) == 9
    assert batch.events[2] == AllBlocksCleared()


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # not msgpack
        msgspec.msgpack.encode("hello"),
        msgspec.msgpack.encode([1.0, [["Nope", 1]]]),
        msgspec.msgpack.encode([1.0, [["BlockStored", "x", None, [1], 1]]]),
        msgspec.msgpack.encode([1.0, [["BlockStored", [1], None, [1], 0]]]),
        msgspec.msgpack.encode([1.0, [{"block_hashes": [1]}]]),
    ],
)
def test_malformed_batches_are_refused_with_a_clear_error(payload):
    with pytest.raises(KvEventDecodeError):
        decode_batch(payload)


def test_hashes_follow_vllms_sha256_cbor_chain():
    hasher = BlockHasher(2, seed="0")
    digests = hasher.digests([1, 2, 3, 4, 5])  # the fifth token is a partial block
    root = sha256_cbor("0")
    assert digests == [sha256_cbor((root, (1, 2), None)), sha256_cbor((digests[0], (3, 4), None))]
    assert hasher.hashes([1, 2, 3, 4]) == tuple(int.from_bytes(d[-8:], "big") for d in digests)
    assert BlockHasher(2, seed="1").digests([1, 2]) != digests[:1]  # another engine seed
    assert sim_token_ids("Hello, world") == sim_token_ids("Hello ,world") and len(sim_token_ids("a b.")) == 3


def test_tokenizing_in_remembered_chunks_gives_the_ids_of_the_whole_text():
    rng = random.Random(5)
    alphabet = "abcdefghij  ..,;\n\t!?é中"
    for _ in range(100):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 9000)))
        assert sim_token_ids(text) == list(_chunk_token_ids(text))
        assert sim_token_ids(text + " tail") == list(_chunk_token_ids(text + " tail"))  # a remembered prefix


def test_the_simulators_cache_announces_stores_evictions_and_clears():
    cache = KvBlockCache(capacity_blocks=3, block_size=2, record_events=True)
    a = cache.allocate((D1, D2), 2, [1, 2, 3, 4])
    assert cache.take_events() == [BlockStored((D1, D2), None, (1, 2, 3, 4), 2)] and cache.take_events() == []
    cache.release(a)
    b = cache.allocate((D1, D3), 3, [1, 2, 9, 9])  # reuses D1, stores D3 after it, evicts D2
    assert cache.take_events() == [BlockRemoved((D2,)), BlockStored((D3,), D1, (9, 9), 2)]
    cache.release(b)
    cache.reset()
    assert cache.take_events() == [AllBlocksCleared()]


# --- the index -------------------------------------------------------------------------------------
def batch(*events) -> EventBatch:
    return EventBatch(0.0, tuple(events))


def test_the_index_stores_evicts_and_clears_per_endpoint_and_model():
    index = EngineBlockIndex()
    assert index.live("e1", "m") is None  # nothing heard: not trusted
    index.apply("e1", "m", batch(stored(D1, D2, D3)))
    entry = index.live("e1", "m")
    h1, h2, h3 = (external_hash(d) for d in (D1, D2, D3))
    assert entry.block_size == 4 and entry.matched((h1, h2, h3)) == 3 and index.live("e1", "other") is None
    index.apply("e1", "m", batch(BlockRemoved((D2,))))
    assert entry.matched((h1, h2, h3)) == 1  # the chain breaks at the evicted block
    index.apply("e1", "m", batch(AllBlocksCleared()))
    assert entry.matched((h1,)) == 0 and index.live("e1", "m") is entry  # empty, and still true
    index.apply("e2", "", batch(stored(D1)))
    assert index.live("e2", "any-model").matched((h1,)) == 1  # a topic without a model
    index.forget("e2")
    assert index.live("e2", "any-model") is None


def test_the_index_is_bounded_and_skips_other_tiers():
    index = EngineBlockIndex(max_blocks=2)
    index.apply("e", "m", batch(stored(1, 2, 3)))
    assert list(index.entry("e", "m").blocks) == [2, 3]  # the oldest stored went
    index.apply("e", "m", batch(BlockStored((4,), None, (0,), 1, medium="CPU")))
    assert 4 not in index.entry("e", "m").blocks


def test_an_index_that_lost_events_resyncs_before_it_is_trusted_again():
    now = [100.0]
    index = EngineBlockIndex(resync_s=30, clock=lambda: now[0])
    index.apply("e", "m", batch(stored(1, 2)))
    index.lost("e")
    assert index.live("e", "m") is None and not index.entry("e", "m").blocks
    index.apply("e", "m", batch(stored(3)))
    now[0] += 31
    assert index.live("e", "m").matched((3,)) == 1


# --- the subscriber's sequence handling ---------------------------------------------------------
def frames(seq: int, *events, model: str = "m") -> list[bytes]:
    return [f"kv@pod@{model}".encode(), seq_bytes(seq), encode_batch(list(events), 0.0)]


def make_subscriber(index: EngineBlockIndex, replay: str = "") -> KvEventSubscriber:
    return KvEventSubscriber("e", "tcp://127.0.0.1:1", replay, index, None)


async def test_duplicates_are_skipped_restarts_clear_and_gaps_without_replay_resync():
    index = EngineBlockIndex(resync_s=60)
    sub = make_subscriber(index)
    sub.receive(frames(0, stored(1)))
    sub.receive(frames(1, stored(2)))
    sub.receive(frames(1, BlockRemoved((1,))))  # a duplicate: not applied again
    assert index.live("e", "m").matched((1, 2)) == 2 and sub.last_seq == 1
    sub.receive(frames(0, stored(5)))  # numbering starts again: the engine restarted
    assert (
        sub.restarts == 1
        and index.live("e", "m").matched((1,)) == 0
        and index.live("e", "m").matched((5,)) == 1
    )
    sub.receive(frames(4, stored(6)))  # 1..3 lost, and no replay socket
    assert sub._gap == (4, "m")
    await sub._recover(*sub._gap)
    assert sub.resyncs == 1 and sub.last_seq == 4 and index.live("e", "m") is None
    assert index.entry("e", "m").matched((6,)) == 1  # rebuilding from what came after the gap
    assert model_of(b"kv@pod@llama") == "llama" and model_of(b"") == ""


async def test_a_gap_is_filled_from_the_publishers_replay_socket():
    pub = KvEventPublisher("127.0.0.1", 0, replay_port=0, pod="sim")
    pub.start()
    try:
        for h in range(5):
            pub.publish("m", [stored(h)])
        index = EngineBlockIndex()
        sub = make_subscriber(index, pub.replay_endpoint)
        sub._ctx = zmq.asyncio.Context()
        sub.receive(frames(0, stored(0)))
        sub.receive(frames(4, stored(4)))  # missed 1..3 on the PUB socket
        await asyncio.wait_for(sub._recover(*sub._gap), 10)
        assert sub.replayed == 3 and sub.resyncs == 0 and sub.last_seq == 4
        assert index.live("e", "m").matched((0, 1, 2, 3, 4)) == 5
        sub._ctx.term()
    finally:
        await pub.close()


# --- the scorer ---------------------------------------------------------------------------------------
def test_precise_scores_what_engines_hold_and_falls_back_for_silent_ones():
    prompt = "a long shared system prompt for the billing agents " * 12
    request = SchedulingRequest("m", prompt=prompt)
    tokens = sim_token_ids(prompt)
    digests = BlockHasher(16).digests(tokens)
    assert len(digests) >= 4
    s = Scheduler(seed=0)
    memory = s.memory
    # e1 publishes and holds the first half of the prompt's blocks; e2 publishes and holds none;
    # e3 publishes nothing, and the router sent this prompt there before.
    half = len(digests) // 2
    memory.engine_blocks.apply("e1", "m", batch(BlockStored(tuple(digests[:half]), None, (), 16)))
    memory.engine_blocks.apply("e2", "m", batch(BlockStored((D1,), None, (), 16)))
    s.record("e3", request)
    cands = [Candidate("e1", model="m"), Candidate("e2", model="m"), Candidate("e3", model="m")]
    scores = PrecisePrefixCacheScorer().score(request, cands, memory)
    approx = PrefixCacheScorer().score(request, cands, memory)
    assert scores == [pytest.approx(half / len(digests)), 0.0, approx[2]] and approx[2] == 1.0
    s.record("e2", request)  # the router's guess does not matter for an engine that publishes
    assert PrecisePrefixCacheScorer().score(request, cands, memory)[1] == 0.0
    assert s.pick(request, cands, profile="default").endpoint.name == "e3"
