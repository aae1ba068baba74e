"""The pool service: Triton endpoints, their health and live load, and the GPUs behind them.

Entry points: `services.pool.app.serve(PoolConfig, ServerConfig)` or `PoolApp(...).register`
for `services.common.server.start_server`; command line `python -m services.pool`.
"""
