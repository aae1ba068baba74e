"""The router as Envoy's external processor (ext_proc): the endpoint-picker data path.

Envoy streams the tokens engine -> client itself; the router only decides (identity, policy,
admission, budgets, the endpoint) from the request and settles from the response's end. See
docs/architecture.md ("the router as an Envoy ext_proc endpoint picker").
"""
