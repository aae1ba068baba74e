"""gRPC face of the cost service: access checks, request handling, metrics. Logic is in store."""

from __future__ import annotations

import asyncio
import time

from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.context import Identity, current_identity
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.common.limits import timestamp_us
from services.common.server import Registrar, RunningServer, open_channel, registrar, start_server_owning
from services.cost import advisor
from services.cost.alert_delivery import AlertDelivery
from services.cost.config import CostConfig
from services.cost.metrics import CostMetrics
from services.cost.store import CostStore
from services.cost.webhooks import WebhookPolicy, WebhookRefused

SERVICE_NAME = cost_pb2.DESCRIPTOR.services_by_name["Cost"].full_name
READER_ROLES = frozenset({"admin", "finance"})


def _authenticated(identity: Identity) -> None:
    if not (identity.user or identity.service or identity.agent):
        raise Unauthenticated(
            "the cost service needs a caller identity (service certificate or bearer token)"
        )


def _who(identity: Identity) -> str:
    return identity.user or identity.service or f"agent {identity.agent}"


def require_recorder(identity: Identity) -> None:
    """Usage is reported by Harness services (their own certificate) or admins, never by agents."""
    _authenticated(identity)
    if not (identity.service or identity.is_admin):
        raise PermissionDenied(f"{_who(identity)} may not record usage: only Harness services and admins may")


# Harness service certificates (the mesh's own components and the ops CLI) are only usable on
# direct connections inside the mesh (Envoy admits agent certificates only), so they act as admin.
def require_admin(identity: Identity, what: str) -> None:
    _authenticated(identity)
    if not (identity.is_admin or identity.service):
        raise PermissionDenied(f"{_who(identity)} may not {what}: it needs the admin role")


def require_reader(identity: Identity, what: str) -> None:
    _authenticated(identity)
    if not (identity.service or READER_ROLES.intersection(identity.roles)):
        raise PermissionDenied(f"{_who(identity)} may not {what}: it needs the admin or finance role")


class CostServicer(cost_pb2_grpc.CostServicer):
    def __init__(
        self,
        store: CostStore,
        metrics: CostMetrics,
        fleet: advisor.FleetProvider | None = None,
        webhooks: WebhookPolicy | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._fleet = fleet
        self._webhooks = webhooks or WebhookPolicy()

    async def Record(self, request: cost_pb2.RecordRequest, context) -> cost_pb2.RecordResponse:
        """Prices and stores one batch in one transaction.

        A bad event fails the call with INVALID_ARGUMENT naming its index in the batch, and
        nothing of the batch is recorded; events already recorded count as duplicates.
        """
        require_recorder(current_identity())
        result = await self._store.record(request.events)
        return cost_pb2.RecordResponse(accepted=result.accepted, duplicates=result.duplicates)

    async def SetPrice(self, request: cost_pb2.SetPriceRequest, context) -> cost_pb2.SetPriceResponse:
        """Adds a price version (effective now when unset); older versions stay for past events."""
        require_admin(current_identity(), "set prices")
        return cost_pb2.SetPriceResponse(price=await self._store.set_price(request.price))

    async def ListPrices(self, request: cost_pb2.ListPricesRequest, context) -> cost_pb2.ListPricesResponse:
        """All price versions, or only those in force at `at_time`."""
        require_reader(current_identity(), "read prices")
        at = timestamp_us("at_time", request.at_time) if request.HasField("at_time") else None
        return cost_pb2.ListPricesResponse(prices=await self._store.list_prices(at))

    async def SetBudget(self, request: cost_pb2.SetBudgetRequest, context) -> cost_pb2.SetBudgetResponse:
        """Creates or replaces a budget by name; answers with its current spend."""
        require_admin(current_identity(), "set budgets")
        if request.budget.webhook_url:  # also checked at every delivery (the name may move)
            try:
                await asyncio.to_thread(self._webhooks.vet, request.budget.webhook_url)
            except WebhookRefused as exc:
                raise InvalidArgument(f"budget.webhook_url refused: {exc}") from None
        return cost_pb2.SetBudgetResponse(budget=await self._store.set_budget(request.budget))

    async def GetBudget(self, request: cost_pb2.GetBudgetRequest, context) -> cost_pb2.GetBudgetResponse:
        """One budget with its spend in the current period and when that period resets."""
        require_reader(current_identity(), "read budgets")
        return cost_pb2.GetBudgetResponse(budget=await self._store.get_budget(request.name))

    async def ListBudgets(
        self, request: cost_pb2.ListBudgetsRequest, context
    ) -> cost_pb2.ListBudgetsResponse:
        """Budgets (optionally of one scope) with their current spend."""
        require_reader(current_identity(), "read budgets")
        return cost_pb2.ListBudgetsResponse(budgets=await self._store.list_budgets(request.scope))

    async def DeleteBudget(
        self, request: cost_pb2.DeleteBudgetRequest, context
    ) -> cost_pb2.DeleteBudgetResponse:
        """Deletes a budget; NOT_FOUND when it does not exist."""
        require_admin(current_identity(), "delete budgets")
        await self._store.delete_budget(request.name)
        return cost_pb2.DeleteBudgetResponse()

    async def Report(self, request: cost_pb2.ReportRequest, context) -> cost_pb2.ReportResponse:
        """Ledger totals over [start_time, end_time) grouped by the requested dimensions."""
        require_reader(current_identity(), "read cost reports")
        start = timestamp_us("start_time", request.start_time) if request.HasField("start_time") else 0
        end = timestamp_us("end_time", request.end_time) if request.HasField("end_time") else None
        return await self._store.report(list(request.group_by), start, end)

    async def Advise(self, request: cost_pb2.AdviseRequest, context) -> cost_pb2.AdviseResponse:
        """Advisor rules over the last period_days of the ledger and the fleet snapshot, if any."""
        require_reader(current_identity(), "read cost advice")
        advice = await advisor.advise(
            self._store, now_us=time.time_ns() // 1000, period_days=request.period_days,
            project=request.project, rule_names=request.rules, fleet=self._fleet,
        )  # fmt: skip
        return cost_pb2.AdviseResponse(
            recommendations=[r.to_proto() for r in advice.recommendations], notes=advice.notes
        )

    async def ListAlerts(self, request: cost_pb2.ListAlertsRequest, context) -> cost_pb2.ListAlertsResponse:
        """Budget alerts raised (of one budget: NOT_FOUND when it does not exist), newest first."""
        require_reader(current_identity(), "read budget alerts")
        return cost_pb2.ListAlertsResponse(
            alerts=await self._store.list_alerts(request.budget, request.limit)
        )


def register(servicer: CostServicer) -> Registrar:
    """Registrar for start_server: adds the Cost service and returns its name."""
    return registrar(cost_pb2_grpc.add_CostServicer_to_server, servicer, SERVICE_NAME)


async def start_cost(
    config: CostConfig,
    *,
    metrics_registry: CollectorRegistry | None = None,
    fleet: advisor.FleetProvider | None = None,
) -> RunningServer:
    """Opens the store and starts the server and its budget alert delivery (to the audit service
    at `config.alerts.audit_addr`, over mTLS with the server's own certificate, and to webhooks);
    both stop and the store closes when the server stops.

    `fleet` supplies the advisor's fleet snapshot (pool deployments, model catalog); without it
    the advisor rules that need the fleet say so in AdviseResponse.notes.
    """
    registry = metrics_registry or CollectorRegistry()
    store = await CostStore.open(config.db_url, timezone=config.timezone)
    servicer = CostServicer(store, CostMetrics(registry, store), fleet, config.alerts.webhooks)
    running = await start_server_owning(
        config.server, register(servicer), store.close, metrics_registry=registry
    )
    channel = None
    try:
        if config.alerts.audit_addr:
            channel = open_channel(config.alerts.audit_addr, config.server.tls)
        delivery = AlertDelivery(store, config.alerts, channel)
        delivery.start()
    except BaseException:
        if channel is not None:
            await channel.close()
        await running.stop(0)
        raise

    async def stop_delivery() -> None:  # runs before the store closes (on_stop runs in reverse)
        await delivery.stop()
        if channel is not None:
            await channel.close()

    running.on_stop(stop_delivery)
    return running
