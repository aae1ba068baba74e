"""A model call's start, recorded durably right before dispatch, so a router killed mid-stream
leaves a trace: on the next start the call is shipped as an aborted call (outbox.py).

The entry is written once the call's endpoint is chosen and its request is on its way to the
engine (`placed`, through the dispatcher's `Placement`, which the engine calls as it sends), so
it names the deployment from the start, the write overlaps the engine's own work, and it always
comes before the first token goes to the caller. It holds the audit and usage events the call would have if it ended now: status
ABORTED, the deployment and the tokens streamed so far (refreshed every PROGRESS_EVERY chunks,
and when a failover picks another endpoint).
They carry the ids the call's own events will have (Call.audit_id, Call.usage_id), so if the
process dies after writing those but before clearing the entry, the receivers store the call
once (they deduplicate by id).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from harness.common.v1 import common_pb2

from services.common.errors import Unavailable
from services.router import records
from services.router.outbox import OutboxError

if TYPE_CHECKING:
    from services.router.call import Call

log = logging.getLogger("harness.router.events")
PROGRESS_EVERY = 16  # chunks between refreshes of what is known


class CallJournal:
    def __init__(self, outbox: Any, call: Call, fail_closed: bool) -> None:
        self.id = str(uuid.uuid4())
        call.audit_id, call.usage_id = str(uuid.uuid4()), str(uuid.uuid4())
        self._outbox = outbox
        self._call = call
        self._fail_closed = fail_closed
        self._open = False
        self._chunks = 0

    def start(self) -> None:
        """Before dispatch. Fail-closed: raises Unavailable (the call must not start unrecorded)."""
        try:
            self._outbox.begin_call(self.id, *self._events())
            self._open = True
        except OutboxError as exc:
            if self._fail_closed:
                raise Unavailable(f"the call's start could not be recorded durably ({exc}); refused") from exc
            log.error("call %s starts without a durable trace: %s", self._call.request_id, exc)

    def placed(self) -> None:
        """The call's endpoint was chosen, right before dispatch: the entry is written now (or,
        on a failover, refreshed with the new deployment). Fail-closed: raises as `start`."""
        if self._open:
            self._refresh()
        else:
            self.start()

    def progress(self) -> None:
        self._chunks += 1
        if self._open and self._chunks % PROGRESS_EVERY == 1 and self._chunks > 1:
            self._refresh()

    def _refresh(self) -> None:
        try:
            self._outbox.progress_call(self.id, *self._events())
        except OutboxError as exc:
            log.warning("call %s: progress not recorded: %s", self._call.request_id, exc)

    def open_id(self) -> str:
        """The entry's id while it is open ("" once ended), for a transaction that ends it along
        with the call's own events (EventShipper.emit_call, then `ended`)."""
        return self.id if self._open else ""

    def ended(self) -> None:
        """The entry was deleted in the same transaction as the call's own events."""
        self._open = False

    def finish(self) -> None:
        """After the call's own events are in the outbox."""
        if self._open:
            self._open = False
            try:
                self._outbox.end_call(self.id)
            except OutboxError as exc:  # the next start ships an aborted twin, deduplicated by id
                log.warning("call %s: end not recorded: %s", self._call.request_id, exc)

    def _events(self) -> tuple[bytes, bytes]:
        call = self._call
        facts = call.facts(status="ABORTED")
        output_tokens = max(call.output_tokens, len(call.text_parts))
        input_tokens = call.input_tokens or call.prompt_tokens
        details = {
            "aborted": "the router stopped before the call ended; recorded at its next start",
            "deployment": call.deployment,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "frontdoor": call.frontdoor,
        }
        audit = records.model_call_event(facts, details)
        usage = records.usage_event(
            facts, common_pb2.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        )
        return audit.SerializeToString(), usage.SerializeToString()
