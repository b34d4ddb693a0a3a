"""Baselines semcache is measured against, re-implemented as their authors described them."""
