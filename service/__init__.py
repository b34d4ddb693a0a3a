"""semcache: an LLM semantic cache and inference gateway served over gRPC."""

__version__ = "0.1.0"
