"""The audit service: append-only, hash-chained audit log."""
