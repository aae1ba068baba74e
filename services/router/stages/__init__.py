"""The stages of the router's request path (listed in order in core.Router.generate_stages)."""
