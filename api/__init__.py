"""Machine front doors: the REST API, the MCP server and webhooks (DESIGN §3, §13)."""
