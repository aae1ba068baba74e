"""Budget enforcement on the router hot path: reserve the maximum cost at admission, settle the
actual cost once (core.py; Redis backend in redis_store.py; budgets and prices from the cost
service in follower.py)."""

from .core import (
    BudgetAlert,
    BudgetEnforcer,
    BudgetReservation,
    BudgetRule,
    BudgetTable,
    LedgerSource,
    PriceTable,
    Subjects,
)
from .memory_store import MemoryBudgets
from .redis_store import RedisBudgets

__all__ = [
    "BudgetAlert",
    "BudgetEnforcer",
    "BudgetReservation",
    "BudgetRule",
    "BudgetTable",
    "LedgerSource",
    "MemoryBudgets",
    "PriceTable",
    "RedisBudgets",
    "Subjects",
]
