"""Delays between retries of a state store that is busy, full or down.

Written by hand, not with tenacity or backoff. The SQLite store retries a
whole batch from the event loop and the PostgreSQL store retries a
coroutine, each with its own test for a transient error. Both need only
the delay sequence below.
"""

from __future__ import annotations

import random

#: First delay, in seconds.
INITIAL_DELAY = 0.05
#: Upper bound of one delay, in seconds.
MAX_DELAY = 5.0


def retry_delay(attempt: int) -> float:
    """Return the delay before retry number `attempt` (1 for the first).

    Exponential growth capped at MAX_DELAY, with "equal jitter": half the
    delay is fixed and half random, so processes that failed together do
    not retry together.
    """
    ceiling = min(MAX_DELAY, INITIAL_DELAY * 2 ** min(attempt - 1, 16))

    return ceiling / 2 + random.uniform(0, ceiling / 2)
