"""What a call leaves behind: Observe (Prometheus, once the caller has the answer) and Record
(audit and usage events through the durable outbox, before the answer's end, with its cost)."""

from __future__ import annotations

import dataclasses

from harness.common.v1 import common_pb2

from services.router import records
from services.router.call import Call, Chunk
from services.router.events import EventShipper
from services.router.metrics import RouterMetrics
from services.router.pipeline import Stage


class Observe(Stage):
    """Counts every call by outcome and front door; latencies of the calls that were dispatched."""

    name = "observe"

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics

    async def release(self, call: Call, error: BaseException | None) -> None:
        self.metrics.requests_of(call.agent_name, call.status, call.frontdoor).inc()
        if not call.dispatched:
            return
        self.metrics.observe_call(
            (call.agent_name, call.model, call.slo_class), call.e2e_ms, call.ttft_ms, call.tbt_ms,
            call.queue_s, call.shed, (call.input_tokens, call.output_tokens), call.redactions,
        )  # fmt: skip
        if call.usage_estimated:
            self.metrics.estimated_usage.labels(call.agent_name, call.model).inc()


class Journal(Stage):
    """Gives the call its journal (call_journal.py), whose entry the dispatcher writes durably
    once it chose the endpoint, before any engine sees the call: a router killed mid-stream
    ships the call as aborted at its next start. Record clears it once the call's own events
    are in the outbox. (A cached answer reaches no engine, and writes no entry.)"""

    name = "journal"

    def __init__(self, events: EventShipper) -> None:
        self.events = events

    async def enter(self, call: Call) -> None:
        call.journal = self.events.journal(call)

    async def on_chunk(self, call: Call, chunk: Chunk) -> Chunk:
        if call.journal is not None:
            call.journal.progress()
        return chunk


class Record(Stage):
    """Refuses calls while the outbox cannot make events durable (fail-closed), and records each
    call: usage once it was dispatched, the model call (or its refusal) in the audit log, with
    the PII kinds and counts its redaction removed (never values)."""

    name = "record"

    def __init__(self, events: EventShipper) -> None:
        self.events = events

    async def enter(self, call: Call) -> None:
        self.events.check_durable()

    async def complete(self, call: Call, error: BaseException | None) -> None:
        facts = call.facts()
        usage = self._usage(call, facts)
        events = (
            [usage, *self._audit(call, facts, error)]
            if usage is not None
            else self._audit(call, facts, error)
        )
        # One transaction with the end of the journal entry; an event failing (fail-closed
        # outbox) skips none of the others, and the entry then stays (shipped as aborted).
        self.events.emit_call(events, call.journal)

    @staticmethod
    def _usage(call: Call, facts: records.CallFacts) -> common_pb2.UsageEvent | None:
        if not call.dispatched:
            return None
        usage = common_pb2.Usage(
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            gpu_seconds=call.charged_gpu_s,
            estimated=call.usage_estimated,
        )
        return records.usage_event(facts, usage, cached=bool(call.cached))

    @staticmethod
    def _audit(
        call: Call, facts: records.CallFacts, error: BaseException | None
    ) -> list[common_pb2.AuditEvent]:
        if call.audited:  # a refusal that wrote its own record (authorization)
            return []
        details: dict = {"frontdoor": call.frontdoor}
        if call.embedding:  # how many texts, never the texts
            details.update(operation="embed", inputs=len(call.inp.inputs))
        if call.dispatched:
            details.update(
                deployment=call.deployment,
                input_tokens=call.input_tokens,
                output_tokens=call.output_tokens,
                ttft_ms=round(call.ttft_ms, 3),
                e2e_ms=round(call.e2e_ms, 3),
            )
        elif error is not None:
            details["refused"] = str(error)[:500]  # the reason given to the caller, never the prompt
        if call.redactions:  # kinds and counts only, never the values
            details["redactions"] = dict(call.redactions)
        if call.usage_estimated:  # the engine gave no counts: billed from an estimate of the text
            details["usage_estimated"] = True
        decision = common_pb2.DECISION_ALLOW if call.dispatched else common_pb2.DECISION_DENY
        events = [records.model_call_event(dataclasses.replace(facts, decision=decision), details)]
        if call.redactions:
            events.append(records.redaction_event(facts, call.redactions))
        return events
