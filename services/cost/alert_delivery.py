"""Delivers budget alerts: to the audit service, to budgets' webhooks, and sweeps for missed ones.

The alert rows (services/cost/alerts.py) are the durable outbox; three background loops
(services/common/shipping.py) read them. Each wakes at once when this process raises an alert and
polls for other replicas' rows, so any cost replica on the same database may deliver any alert.

- audit: undelivered rows (oldest first, in batches) go over `Audit.Ingest` as BUDGET_DECISION
  events (action "alert", object "budget:<name>", the scope's actor field set to the subject,
  details: alert_id, percent, limit_reached, spent/limit in micro-USD, scope, subject, period and
  its bounds). The event id names the crossing ("cost-alert-" + a hash of budget, period and
  percent), so a batch resent after a lost acknowledgement, a crash or by another replica is
  stored once, and a rebuilt cost database cannot reuse an id. While the audit service is down
  the loop backs off (capped) and the rows wait. Without an audit address nothing is shipped
  (logged at start); the rows keep `audit_shipped` false and ship once an address is configured.
- webhook: a row whose budget had a webhook URL is POSTed there as JSON (`webhook_payload`) with
  an `X-Harness-Alert-Id` header, if the webhook policy (webhooks.py) still allows the URL (else
  the row is `failed` at once, "refused: ..."). Any 2xx delivers it. Otherwise the attempt is recorded (count,
  last error) and retried after `min_backoff_s` x 2^(attempt-1), capped at `max_backoff_s`, up to
  `attempts` tries; then the row is `failed`. An attempt is claimed in the database first
  (compare-and-set, with a lease), so two replicas do not POST the same alert at once; delivery is
  still at least once (a crash after the POST but before recording it sends it again), hence the
  id header for receivers that deduplicate.
- sweep: at start and every `sweep_s`, every budget's current period is checked (alerts.py).
- admin: price and budget changes (admin_changes.py) go over `Audit.Ingest` as ADMIN_CHANGE
  events the same way, from their own outbox table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import struct_pb2
from harness.audit.v1 import audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2

from services.common.shipping import ShippingLoop, ingest_batch
from services.cost import admin_changes
from services.cost.alerts import HARD_LIMIT_PERCENT, SCOPE_FIELD, AlertRow
from services.cost.config import AlertConfig
from services.cost.store import CostStore
from services.cost.validation import us_to_ts
from services.cost.webhooks import WebhookRefused, post_json

log = logging.getLogger("harness.cost.alerts")

SOURCE = "cost"
LEASE_MARGIN_S = 30.0


def _enum(enum_type, prefix: str, value: int) -> str:
    try:
        return enum_type.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def alert_facts(a: AlertRow) -> dict[str, Any]:
    """What an alert says, as JSON-friendly values (audit details and the webhook body share it)."""
    return {
        "alert_id": a.event_id,
        "budget": a.budget,
        "percent": a.percent,
        "limit_reached": a.percent >= HARD_LIMIT_PERCENT,
        "spent_micro_usd": a.spent_micro_usd,
        "limit_micro_usd": a.limit_micro_usd,
        "scope": _enum(cost_pb2.BudgetScope, "BUDGET_SCOPE_", a.scope),
        "subject": a.subject,
        "period": _enum(cost_pb2.BudgetPeriod, "BUDGET_PERIOD_", a.period),
        # RFC 3339 UTC; empty for lifetime budgets.
        "period_start": "" if a.lifetime else us_to_ts(a.period_start_us).ToJsonString(),
        "period_end": "" if a.lifetime else us_to_ts(a.period_end_us).ToJsonString(),
    }


def audit_event(a: AlertRow) -> common_pb2.AuditEvent:
    """The BUDGET_DECISION audit event of one alert."""
    details = struct_pb2.Struct()
    details.update({k: v for k, v in alert_facts(a).items() if k != "budget"})
    field = SCOPE_FIELD.get(a.scope)
    return common_pb2.AuditEvent(
        event_id=a.event_id,
        time=us_to_ts(a.created_us),
        kind=common_pb2.AUDIT_EVENT_KIND_BUDGET_DECISION,
        actor=common_pb2.Actor(**{field: a.subject}) if field else None,
        object=f"budget:{a.budget}",
        action="alert",
        status="OK",
        source=SOURCE,
        details=details,
    )


def webhook_payload(a: AlertRow) -> dict[str, Any]:
    """The JSON body POSTed to a budget's webhook."""
    facts = alert_facts(a)
    return {"id": facts.pop("alert_id"), **facts, "time": us_to_ts(a.created_us).ToJsonString()}


PostFn = Callable[..., None]


class AlertDelivery:
    """The cost service's alert loops; `start` in the serving loop, `stop` at shutdown."""

    def __init__(
        self,
        store: CostStore,
        config: AlertConfig,
        audit_channel: grpc.aio.Channel | None = None,
        *,
        post: PostFn = post_json,
    ) -> None:
        self._book = store.alerts
        self._store = store
        self._config = config
        self._post = post
        self._audit = audit_pb2_grpc.AuditStub(audit_channel) if audit_channel is not None else None
        c = config
        self._loops: list[ShippingLoop] = [
            ShippingLoop(self._sweep_step, name="cost-alert-sweep", log=log, poll_s=c.sweep_s,
                         min_backoff_s=c.min_backoff_s, max_backoff_s=c.max_backoff_s,
                         failing_message="budget alert sweep failed (will retry): %s"),
            ShippingLoop(self._webhook_step, name="cost-alert-webhooks", log=log, poll_s=c.poll_s,
                         min_backoff_s=c.min_backoff_s, max_backoff_s=c.max_backoff_s,
                         failing_message="budget alert webhooks: cannot read or update alerts (will retry): %s"),
        ]  # fmt: skip
        if self._audit is not None:
            self._loops.append(
                ShippingLoop(self._admin_step, name="cost-admin-audit", log=log, poll_s=c.poll_s,
                             min_backoff_s=c.min_backoff_s, max_backoff_s=c.max_backoff_s,
                             failing_message="price and budget changes cannot be shipped to the audit "
                                             "service (will retry): %s")
            )  # fmt: skip
            self._loops.append(
                ShippingLoop(self._audit_step, name="cost-alert-audit", log=log, poll_s=c.poll_s,
                             min_backoff_s=c.min_backoff_s, max_backoff_s=c.max_backoff_s,
                             failing_message="budget alerts cannot be shipped to the audit service "
                                             "(will retry): %s",
                             recovered=lambda: "budget alerts: audit service reachable again")
            )  # fmt: skip
        self._unlisten: Callable[[], None] | None = None

    def start(self) -> None:
        if self._audit is None:
            log.warning(
                "budget alerts: no audit service address (--audit, HARNESS_AUDIT_ADDR): alerts are "
                "listed and sent to webhooks but not shipped to the audit log"
            )
        self._unlisten = self._book.add_listener(lambda _new: self.wake())
        self._store.admin_listeners.append(self.wake)
        for loop in self._loops:
            loop.start()

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self.wake in self._store.admin_listeners:
            self._store.admin_listeners.remove(self.wake)
        for loop in self._loops:
            await loop.stop()

    def wake(self) -> None:
        """New alerts: deliver now (thread-safe; the sweep keeps its own schedule)."""
        for loop in self._loops[1:]:
            loop.wake()

    # ---- loops ----

    async def _sweep_step(self) -> float | None:
        await self._store.check_budgets()
        return None

    async def _audit_step(self) -> float | None:
        assert self._audit is not None
        batch = self._config.batch_size
        rows = await asyncio.to_thread(self._book.pending_audit, batch)
        if not rows:
            return None
        events = [audit_event(a) for a in rows]

        resp = await ingest_batch(self._audit, events, self._config.audit_timeout_s)
        await asyncio.to_thread(self._book.mark_audit_shipped, [a.id for a in rows])
        log.debug("budget alerts shipped to audit: %d new, %d resent", resp.accepted, resp.duplicates)
        return 0 if len(rows) >= batch else None

    async def _admin_step(self) -> float | None:
        assert self._audit is not None
        batch = self._config.batch_size
        rows = await asyncio.to_thread(self._store.pending_admin_changes, batch)
        if not rows:
            return None
        events = [admin_changes.audit_event(r) for r in rows]

        await ingest_batch(self._audit, events, self._config.audit_timeout_s)
        await asyncio.to_thread(self._store.mark_admin_changes_shipped, [r.id for r in rows])
        return 0 if len(rows) >= batch else None

    async def _webhook_step(self) -> float | None:
        batch = self._config.batch_size
        due = await asyncio.to_thread(self._book.due_webhooks, batch)
        if due:
            results = await asyncio.gather(*(self._deliver(a) for a in due), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            if len(due) >= batch:
                return 0
        nxt = await asyncio.to_thread(self._book.next_webhook_us)
        if nxt is None:
            return None
        return max(0.05, (nxt - self._book.now_us()) / 1e6)

    async def _deliver(self, a: AlertRow) -> None:
        c = self._config
        lease_us = int((c.webhook_timeout_s + LEASE_MARGIN_S) * 1e6)
        attempt = await asyncio.to_thread(self._book.claim_webhook, a, lease_us)
        if attempt is None:  # another replica has it
            return
        try:
            await asyncio.to_thread(
                self._post, a.webhook_url, webhook_payload(a), timeout_s=c.webhook_timeout_s,
                headers={"X-Harness-Alert-Id": a.event_id}, policy=c.webhooks,
            )  # fmt: skip
        except WebhookRefused as exc:  # the URL is not allowed (any more): retrying cannot help
            log.warning("budget alert %s: webhook refused, not sent: %s", a.event_id, exc)
            await asyncio.to_thread(self._book.webhook_result, a.id, error=f"refused: {exc}")
            return
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            if attempt >= c.webhook_attempts:
                log.warning(
                    "budget alert %s: webhook failed %d times, giving up: %s", a.event_id, attempt, error
                )
                await asyncio.to_thread(self._book.webhook_result, a.id, error=error)
                return
            retry_s = min(c.webhook_min_backoff_s * 2 ** (attempt - 1), c.webhook_max_backoff_s)
            log.info("budget alert %s: webhook attempt %d failed (%s); retry in %.1fs", a.event_id, attempt,
                     error, retry_s)  # fmt: skip
            await asyncio.to_thread(
                self._book.webhook_result, a.id, error=error, retry_in_us=int(retry_s * 1e6)
            )
            return
        await asyncio.to_thread(self._book.webhook_result, a.id)
        log.info("budget alert %s delivered to its webhook (attempt %d)", a.event_id, attempt)
