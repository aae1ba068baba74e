"""Budget enforcement on the router hot path: reserve the maximum cost at admission, settle the
actual cost once (core.py; Redis backend in redis_store.py; budgets and prices from the cost
service in follower.py)."""

from .core import (
    BudgetEnforcer,
    BudgetReservation,
    BudgetRule,
    BudgetTable,
    GpuTimeEstimate,
    LedgerSource,
    PriceTable,
    Subjects,
)
from .memory_store import MemoryBudgets
from .redis_store import RedisBudgets

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
