"""`custctx bench`: the performance benchmark and its hand-written SQL floors."""
