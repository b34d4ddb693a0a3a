"""Model prices and the cost of one answer.

Prices are US dollars per million tokens, as providers publish them. The
shipped table is the example catalogue that the upstream simulator serves
offline; a real deployment overrides it with its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPrice:
    """What one model charges, in USD per million input / output tokens."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float

    @property
    def per_mtok_both_ways(self) -> float:
        """A million tokens in plus a million out: how models of one tier are compared."""
        return self.input_usd_per_mtok + self.output_usd_per_mtok

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of one call with the given usage."""
        return (
            prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok
        ) / 1_000_000


DEFAULT_PRICES: dict[str, ModelPrice] = {
    # a small fast model, another provider's middle model, and a strong model
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "claude-3-5-haiku": ModelPrice(0.80, 4.00),
    "gpt-4o": ModelPrice(2.50, 10.00),
}
