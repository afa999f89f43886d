"""Retry delays: a pure, capped, jittered exponential backoff."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1, 2, ...), in seconds.

    "Full jitter": uniform in [d/2, d] where d = min(cap, base * 2**(attempt-1)),
    so many clients reconnecting at once spread out, and the wait never
    exceeds ``cap``.
    """
    if attempt < 1:
        return 0.0
    ceiling = min(cap, base * (2 ** min(attempt - 1, 32)))
    draw = (rng or random).random()
    return ceiling / 2 + draw * ceiling / 2
