"""The start of every dispatched call is durable in the router's outbox until the call's own
records are: a normal call leaves no journal entry and its records carry the journal's ids; a
process that dies mid-stream leaves one, which the next start ships as an aborted call (audit
with status ABORTED and the tokens streamed so far, and usage), once."""

from __future__ import annotations

import grpc
from harness.common.v1 import common_pb2
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.router.call import Call, GenerationInput
from services.router.call_journal import CallJournal
from services.router.events import EventShipper
from services.router.outbox import Outbox, OutboxError
from tests.integration.test_router_hot_path import harness, run, sim  # noqa: F401


async def test_a_finished_call_clears_its_journal_entry_and_uses_its_ids(harness):  # noqa: F811
    router = harness[0]
    events = router.events
    call = await run(router)
    assert events.outbox.calls_under_way() == 0
    (model_call,) = [e for e in events.audit if e.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL]
    assert model_call.event_id == call.audit_id and model_call.status == "OK"
    assert events.usage[-1].event_id == call.usage_id


async def test_a_call_under_way_at_a_crash_ships_as_aborted_at_the_next_start(tmp_path):
    path = str(tmp_path / "outbox.db")
    crashed = Outbox(path)
    ctx = reqctx.new_context(reqctx.Identity(agent="demo-agent", user="alice"))
    call = Call(GenerationInput(prompt="a long report"), ctx=ctx, model="llama-3-8b", prompt_tokens=12)
    journal = CallJournal(crashed, call, fail_closed=True)
    journal.start()
    for i in range(40):  # 40 chunks streamed, then SIGKILL: no finish, no records
        call.text_parts.append(f"t{i} ")
        call.output_tokens = i + 1
        journal.progress()
    crashed.close()

    again = Outbox(path)  # the restarted router
    async with grpc.aio.insecure_channel("127.0.0.1:1") as ch:
        shipper = EventShipper(ch, ch, CollectorRegistry(), again, linger_s=60)
        shipper.start()  # recovers before shipping (the receivers are down: events wait)
        assert again.calls_under_way() == 0
        [(_, audit)] = again.peek("audit", 10)
        [(_, usage)] = again.peek("usage", 10)
        event = common_pb2.AuditEvent.FromString(audit)
        assert event.event_id == call.audit_id and event.status == "ABORTED"
        assert event.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL and event.actor.user == "alice"
        assert event.details["output_tokens"] >= 33 and "aborted" in event.details  # refreshed every 16
        used = common_pb2.UsageEvent.FromString(usage)
        assert (
            used.event_id == call.usage_id
            and used.usage.output_tokens >= 33
            and used.usage.input_tokens == 12
        )
        await shipper.drain(0.1)
    assert Outbox(path).recover_calls() == 0  # shipped once, not at every start


def _started_call(outbox: Outbox) -> tuple[Call, CallJournal]:
    ctx = reqctx.new_context(reqctx.Identity(agent="demo-agent", user="alice"))
    call = Call(GenerationInput(prompt="a short answer"), ctx=ctx, model="llama-3-8b", prompt_tokens=4)
    journal = CallJournal(outbox, call, fail_closed=True)
    journal.start()
    return call, journal


def _events_of(call: Call) -> list:
    return [
        common_pb2.UsageEvent(event_id=call.usage_id, model="llama-3-8b"),
        common_pb2.AuditEvent(event_id=call.audit_id, status="OK"),
    ]


async def test_a_finished_calls_events_and_its_journal_end_are_written_together(tmp_path, monkeypatch):
    outbox = Outbox(str(tmp_path / "outbox.db"))
    call, journal = _started_call(outbox)

    def one_by_one(lane, payload):
        raise AssertionError("written one by one, not in the call's one transaction")

    monkeypatch.setattr(outbox, "append", one_by_one)
    async with grpc.aio.insecure_channel("127.0.0.1:1") as ch:
        shipper = EventShipper(ch, ch, CollectorRegistry(), outbox, fail_closed=True)
        shipper.emit_call(_events_of(call), journal)
        assert outbox.calls_under_way() == 0
        [(_, usage)] = outbox.peek("usage", 10)
        [(_, audit)] = outbox.peek("audit", 10)
        assert common_pb2.UsageEvent.FromString(usage).event_id == call.usage_id
        assert common_pb2.AuditEvent.FromString(audit).event_id == call.audit_id
        journal.finish()  # already ended: nothing more to delete, no error
        assert outbox.pending("audit") == 1


async def test_when_the_one_transaction_fails_each_event_is_written_on_its_own(tmp_path, monkeypatch):
    outbox = Outbox(str(tmp_path / "outbox.db"))
    call, journal = _started_call(outbox)

    def refuse(rows, call_id=""):
        raise OutboxError("database is locked")

    monkeypatch.setattr(outbox, "append_call_end", refuse)
    async with grpc.aio.insecure_channel("127.0.0.1:1") as ch:
        shipper = EventShipper(ch, ch, CollectorRegistry(), outbox, fail_closed=True)
        shipper.emit_call(_events_of(call), journal)
        assert outbox.pending("usage") == 1 and outbox.pending("audit") == 1
        assert outbox.calls_under_way() == 0  # every event made it: the entry ends


async def test_the_entry_is_written_once_the_endpoint_is_chosen_and_names_its_deployment(harness):  # noqa: F811
    router = harness[0]
    outbox = router.events.outbox
    writes: list[tuple[str, str]] = []
    begin, progress = outbox.begin_call, outbox.progress_call

    def deployment(audit: bytes) -> str:
        return common_pb2.AuditEvent.FromString(audit).details["deployment"]

    def begin_call(call_id, audit, usage):
        writes.append(("begin", deployment(audit)))
        begin(call_id, audit, usage)

    def progress_call(call_id, audit, usage):
        writes.append(("progress", deployment(audit)))
        progress(call_id, audit, usage)

    outbox.begin_call, outbox.progress_call = begin_call, progress_call
    call = await run(router)
    assert call.output_tokens == 8 and outbox.calls_under_way() == 0
    # One write, before dispatch, that already names where the call runs; none per token.
    assert writes == [("begin", call.deployment)] and call.deployment.endswith("@sim-0")
