"""The routing strategies (the `routing_strategy` setting), as a type and its choices."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["STRATEGIES", "Strategy"]

Strategy = Literal["rules", "nearest", "nearest+rules"]
# The choices, for the CLI: derived from the type, never re-listed.
STRATEGIES: tuple[str, ...] = get_args(Strategy)
