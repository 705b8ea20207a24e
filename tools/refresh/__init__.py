"""Refresh of long-term memory: full, incremental, events, and the chunk runner."""
