"""The audit service: append-only, hash-chained audit log (DESIGN.md sections 2 and 6)."""
