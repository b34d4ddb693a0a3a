"""The semantic cache: scope, vector store backends and the lookup/store logic."""
