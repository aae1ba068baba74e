"""Budget enforcement on the router hot path: reserve the maximum cost at admission, settle the
actual cost once (core.py; Redis backend in redis_store.py; which budgets apply in rules.py,
prices and the GPU-time bound in prices.py; budgets and prices from the cost service in
follower.py; metrics in metrics.py)."""

from .core import BudgetEnforcer, BudgetReservation, LedgerSource
from .memory_store import MemoryBudgets
from .prices import GpuTimeEstimate, PriceTable
from .redis_store import RedisBudgets
from .rules import BudgetRule, BudgetTable, Subjects

__all__ = [
    "BudgetEnforcer",
    "BudgetReservation",
    "BudgetRule",
    "BudgetTable",
    "GpuTimeEstimate",
    "LedgerSource",
    "MemoryBudgets",
    "PriceTable",
    "RedisBudgets",
    "Subjects",
]
