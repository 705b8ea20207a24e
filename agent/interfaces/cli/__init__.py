"""The `custctx` command line: shared helpers and one module per command group."""
