"""Example agents built on the Harness (run them against `make run`'s stack)."""
