"""Grouping concurrent work: micro-batches, shared upstream calls for identical in-flight
misses, and stream deltas joined while the reader is busy."""
