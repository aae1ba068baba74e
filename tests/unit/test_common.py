"""Unit tests of the shared bootstrap pieces: JWT, request context, planned RPCs."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.common import context as reqctx
from services.common.errors import InvalidArgument, ResourceExhausted, Unauthenticated, Unimplemented
from services.common.identity import JwtVerifier, mint_jwt
from services.common.planned import planned


async def test_jwt_roundtrip_and_rejections(jwt_keypair):
    pub, private = jwt_keypair
    verifier = JwtVerifier(pub.read_bytes(), "harness", "harness")
    ident = await verifier.verify(mint_jwt(private, "alice", roles=("admin",)))
    assert ident.user == "alice" and ident.is_admin and ident.auth_method == "jwt"
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier.verify(mint_jwt(private, "alice", ttl_s=-120))
    with pytest.raises(Unauthenticated, match="rejected"):
        await verifier.verify(mint_jwt(private, "alice", audience="someone-else"))
    with pytest.raises(Unauthenticated):
        await verifier.verify("not-a-token")


def test_context_keeps_caller_trace_and_ids():
    trace = "0af7651916cd43dd8448eb211c80319c"
    ctx = reqctx.context_from_metadata(
        [
            ("traceparent", f"00-{trace}-b7ad6b7169203331-01"),
            ("x-request-id", "req-1"),
            ("x-harness-session-id", "s-9"),
            ("x-harness-step-id", "3"),
        ]
    )
    assert (ctx.trace_id, ctx.request_id, ctx.session_id, ctx.step_id) == (trace, "req-1", "s-9", "3")
    assert ctx.traceparent().startswith(f"00-{trace}-") and ctx.span_id != "b7ad6b7169203331"


def test_context_generates_ids_for_malformed_trace():
    ctx = reqctx.context_from_metadata([("traceparent", "garbage")])
    assert len(ctx.trace_id) == 32 and ctx.request_id


def test_resource_exhausted_carries_retry_after():
    exc = ResourceExhausted("slow down", retry_after_ms=250)
    assert exc.trailers == {"retry-after-ms": "250"}


async def test_planned_names_the_feature():
    @planned(pool_pb2.DESCRIPTOR.services_by_name["Pool"], {"Deploy": "placement (issue #5)"})
    class Partial(pool_pb2_grpc.PoolServicer):
        async def ListGpus(self, request, context):
            return pool_pb2.ListGpusResponse()

    servicer = Partial()
    assert isinstance(await servicer.ListGpus(None, None), pool_pb2.ListGpusResponse)
    with pytest.raises(Unimplemented, match=r"Pool.Deploy is not implemented yet: placement \(issue #5\)"):
        await servicer.Deploy(None, None)
    with pytest.raises(Unimplemented, match=r"Pool\.WatchEndpoints"):
        async for _ in servicer.WatchEndpoints(None, None):
            pass


async def test_cached_jwt_still_expires(jwt_keypair):
    pub, private = jwt_keypair
    verifier = JwtVerifier(pub.read_bytes(), "harness", "harness", leeway_s=0)
    # exp has whole-second resolution: 2 s leaves at least 1 s of validity for the first checks.
    token = mint_jwt(private, "bob", ttl_s=2)
    assert (await verifier.verify(token)).user == "bob"
    assert (await verifier.verify(token)).user == "bob"  # served from the cache
    await asyncio.sleep(2.2)
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier.verify(token)


def test_servers_accept_the_keepalive_pings_our_channels_send():
    # A server that allows fewer pings than a channel sends answers with GOAWAY "too_many_pings"
    # and breaks every long-lived Watch stream on that connection.
    from services.common.server import KEEPALIVE_MS, SERVER_KEEPALIVE_OPTIONS

    options = dict(SERVER_KEEPALIVE_OPTIONS)
    assert options["grpc.http2.min_ping_interval_without_data_ms"] <= KEEPALIVE_MS
    assert options["grpc.keepalive_permit_without_calls"] == 1


@pytest.mark.parametrize("sent", ["a\tb", "caf\u00e9", "a b", "x\x7f", "", "\u2028"])
def test_a_request_id_of_other_than_visible_ascii_is_replaced_not_echoed(sent):
    """The id is echoed in a response header and written in logs: a tab or Latin-1 character an
    HTTP header carries gets a fresh id, as a missing one does."""
    ctx = reqctx.context_from_metadata([("x-request-id", sent)])
    assert ctx.request_id != sent and str(uuid.UUID(ctx.request_id)) == ctx.request_id


def test_a_visible_ascii_request_id_is_kept_and_cut_to_128():
    sent = "".join(chr(c) for c in range(0x21, 0x7F))  # all 94, then cut
    assert reqctx.context_from_metadata([("x-request-id", sent)]).request_id == sent
    assert reqctx.context_from_metadata([("x-request-id", "r" * 200)]).request_id == "r" * 128


@pytest.mark.parametrize("header", ["x-harness-session-id", "x-harness-step-id"])
@pytest.mark.parametrize(
    ("sent", "why"),
    [
        ("case\t1", r"holds '\\t' at position 4"),
        ("caf\u00e9", r"holds '\u00e9' at position 3"),
        ("case 1", r"holds ' ' at position 4"),
        ("s\x00", r"holds '\\x00' at position 1"),
        ("s\x1b[31m", r"holds '\\x1b' at position 1"),
        ("s" * 257, "is 257 characters; the limit is 256"),
    ],
)
def test_a_bad_session_or_step_header_is_refused_naming_the_header(header, sent, why):
    """These ids tie a caller's calls together in audit and usage records: a bad one is refused,
    not silently dropped or cut (which would hide the caller's bug), and never written."""
    metadata = [(header, sent)]
    with pytest.raises(InvalidArgument, match=f"^the {header} header {why}"):
        reqctx.refuse_bad_lineage(metadata)
    ctx = reqctx.context_from_metadata(metadata)
    assert (ctx.session_id, ctx.step_id) == ("", "")


def test_a_visible_ascii_session_and_step_id_up_to_256_are_kept_whole():
    every = "".join(chr(c) for c in range(0x21, 0x7F))
    metadata = [("x-harness-session-id", every), ("x-harness-step-id", "7" * 256), ("x-other", "a\tb")]
    reqctx.refuse_bad_lineage(metadata)
    ctx = reqctx.context_from_metadata(metadata)
    assert (ctx.session_id, ctx.step_id) == (every, "7" * 256)
    reqctx.refuse_bad_lineage([("x-harness-session-id", "")])  # empty: no session, as when absent
