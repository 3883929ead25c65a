"""The Monty backend's section of the server's settings (`[monty]`), here beside the
backend so that it imports nothing of the server's configuration."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MontySettings(BaseModel):
    """The Monty backend's worker pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Monty worker processes kept warm, and the most that may run at once.
    min_workers: int = Field(default=2, ge=0)
    # Sessions hold a worker each while open, so this is well above the core count.
    max_workers: int = Field(default=16, gt=0)
    # Fresh sessions checked out ahead of demand (capped below max workers): a run then
    # skips the checkout. 0 turns it off.
    warm_sessions: int = Field(default=2, ge=0)
    # How long a request waits for a free worker before INFRA_UNAVAILABLE.
    checkout_timeout_s: float = Field(default=10.0, gt=0)
    # Host-side backstop per worker turn, above any policy's wall-time budget.
    request_timeout_s: float = Field(default=120.0, gt=0)
