"""Model prices in USD per million tokens, extendable from configuration."""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class ModelPrice(BaseModel):
    """Price of one model in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


# Public list prices; users extend or override them in the config file's [prices] table.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.60),
    "gpt-4o": ModelPrice(input_per_mtok=2.50, output_per_mtok=10.00),
    "gpt-4.1": ModelPrice(input_per_mtok=2.00, output_per_mtok=8.00),
    "gpt-4.1-mini": ModelPrice(input_per_mtok=0.40, output_per_mtok=1.60),
    "gpt-4.1-nano": ModelPrice(input_per_mtok=0.10, output_per_mtok=0.40),
    "o4-mini": ModelPrice(input_per_mtok=1.10, output_per_mtok=4.40),
    "claude-3-5-haiku-latest": ModelPrice(input_per_mtok=0.80, output_per_mtok=4.00),
    "claude-sonnet-4-0": ModelPrice(input_per_mtok=3.00, output_per_mtok=15.00),
}


# A dated snapshot suffix: `-2024-07-18` (OpenAI) or `-20241022` (Anthropic).
_SNAPSHOT_DATE = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


def model_key(model: str) -> str:
    """Return the price-table key for a model string (`openai:gpt-4o` -> `gpt-4o`)."""
    return model.split(":", 1)[1] if ":" in model else model


def lookup_price(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """Find a model's price: the full string, without provider prefix, then without snapshot date.

    Providers report the snapshot they served (`gpt-4o-mini-2024-07-18`), not the alias asked for.
    """
    key = model_key(model)
    return prices.get(model) or prices.get(key) or prices.get(_SNAPSHOT_DATE.sub("", key))


def cost_usd(price: ModelPrice | None, input_tokens: int, output_tokens: int) -> float:
    """Return the cost of one call, or 0.0 when the model has no price."""
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
