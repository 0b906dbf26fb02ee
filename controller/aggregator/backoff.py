"""Reconnect delays: capped exponential backoff with jitter. Pure: the random draw is passed in.

Attempt ``n`` (0-based) waits ``min(max_s, initial_s * 2**n)`` scaled by a factor drawn from
[0.5, 1.0): the wait still grows, and thousands of chargers that lost the same broker at the
same moment spread their reconnects out instead of arriving together ("equal jitter").
"""

from __future__ import annotations


def backoff_delay_s(attempt: int, initial_s: float, max_s: float, random01: float) -> float:
    """The wait before reconnect attempt ``attempt`` (0 = the first after a loss)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, found {attempt}")
    # 2**64 already exceeds any cap; bounding the exponent keeps the float finite.
    ceiling_s = min(max_s, initial_s * 2.0 ** min(attempt, 64))
    jitter = min(max(random01, 0.0), 1.0)
    return ceiling_s * (0.5 + 0.5 * jitter)
