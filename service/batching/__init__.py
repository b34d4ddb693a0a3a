"""Grouping concurrent work: shared upstream calls for identical in-flight misses."""
