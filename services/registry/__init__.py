"""The registry service: tenancy, agents and lifecycle, model/tool catalogs and casbin policy.

Layers: `domain` (plain dataclasses and rules), `store` + `agents` + `changelog` (SQLAlchemy,
SQLite or PostgreSQL; schema by `migrate` and `migrations/`), `policy` (casbin over the same
database), `watch` (the revisioned change stream), `servicer` (proto <-> domain, per-RPC
access), `app` (config and wiring), `seed` (applies the demo YAML through the gRPC API).
"""
