"""Routing: which model tier answers a request that names no model.

`Router` (in `router.py`) combines the rule-based decision tree (`rules.py`)
and nearest-labelled-example voting on the cache lookup's embedding
(`nearest.py`); `evaluate.py` scores it on a labelled file.
"""

from service.routing.router import RouteDecision, Router, build_router
from service.routing.strategy import STRATEGIES

__all__ = ["STRATEGIES", "RouteDecision", "Router", "build_router"]
