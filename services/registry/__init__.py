"""The registry service: tenancy, agents and lifecycle, model/tool catalogs and casbin policy.

Layers: `domain` (plain dataclasses and rules), `store` (SQLAlchemy, SQLite or PostgreSQL),
`policy` (casbin over the same database), `servicer` (proto <-> domain, per-RPC access),
`app` (config and wiring), `seed` (applies the demo YAML through the gRPC API).
"""
