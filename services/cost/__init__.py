"""The cost service: price table, usage ledger, budgets and reports."""
