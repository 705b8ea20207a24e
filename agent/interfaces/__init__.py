"""Interfaces over the agent: the CLI, the HTTP API, the MCP server and their shared service."""
