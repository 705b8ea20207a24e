"""The one read path (a frozen scope per request), context assembly and the reference view."""
