"""The stages of the router's request paths (listed in order in core.Router.generate_stages,
relay_stages and embed_stages, and for tool calls in tools.ToolInvoker.tool_stages)."""
