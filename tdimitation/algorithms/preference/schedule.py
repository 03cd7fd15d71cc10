"""Query schedules: how many comparisons each iteration asks for, and agent steps."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tdimitation.errors import PreferenceError

#: Named schedules: relative query rate at training progress t in [0, 1].
QUERY_SCHEDULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "constant": lambda t: np.ones_like(t),
    "hyperbolic": lambda t: 1.0 / (1.0 + t),
    "inverse_quadratic": lambda t: 1.0 / (1.0 + t**2),
}


def apportion(total: int, weights: np.ndarray) -> list[int]:
    """Split ``total`` in proportion to ``weights`` into integers summing to ``total``.

    Largest remainders: every share is its quota rounded down, and the units left over go
    to the shares with the largest fractional parts (the first on ties).
    """
    quota = total * weights / weights.sum()
    shares = np.floor(quota).astype(np.int64)
    left = int(total - shares.sum())
    order = np.argsort(-(quota - shares), kind="stable")
    shares[order[:left]] += 1
    return [int(s) for s in shares]


def comparison_schedule(
    total_comparisons: int,
    num_iterations: int,
    initial_comparison_frac: float,
    query_schedule: str | Callable[[np.ndarray], np.ndarray] = "hyperbolic",
) -> list[int]:
    """Comparisons per round: ``[initial, iteration 1, ..., iteration N]``.

    The initial batch is ``int(total × initial_comparison_frac)``; the rest is apportioned
    to the ``num_iterations`` iterations by the schedule evaluated at ``N`` evenly spaced
    points of [0, 1], normalised (for example 100 comparisons, 5 iterations, fraction 0.1,
    hyperbolic: ``[10, 25, 20, 17, 15, 13]``).
    """
    if num_iterations < 1:
        raise PreferenceError(f"num_iterations must be >= 1, got {num_iterations}")
    if not 0.0 <= initial_comparison_frac < 1.0:
        raise PreferenceError(
            f"initial_comparison_frac must be in [0, 1), got {initial_comparison_frac}"
        )
    initial = int(total_comparisons * initial_comparison_frac)
    if total_comparisons < 1 or total_comparisons - initial < 1:
        raise PreferenceError(
            f"total_comparisons ({total_comparisons}) leaves nothing after the initial batch "
            f"({initial}): raise the budget"
        )
    if callable(query_schedule):
        shape = query_schedule
    elif query_schedule in QUERY_SCHEDULES:
        shape = QUERY_SCHEDULES[query_schedule]
    else:
        raise PreferenceError(
            f"unknown query_schedule {query_schedule!r}; choose one of "
            f"{sorted(QUERY_SCHEDULES)} or pass a callable of t in [0, 1]"
        )
    weights = np.asarray(shape(np.linspace(0.0, 1.0, num_iterations)), dtype=np.float64)
    weights = np.broadcast_to(weights, (num_iterations,))
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise PreferenceError(
            "the query schedule must give finite, non-negative rates with a positive sum"
        )
    return [initial, *apportion(total_comparisons - initial, weights)]


def agent_rounds(total_rounds: int, num_iterations: int) -> list[int]:
    """Agent rounds per iteration: equal shares, the remainder to the last iteration."""
    if total_rounds < num_iterations:
        raise PreferenceError(
            f"the agent budget is {total_rounds} rounds, fewer than num_iterations "
            f"({num_iterations}): raise total_frames or lower num_iterations"
        )
    base = total_rounds // num_iterations
    rounds = [base] * num_iterations
    rounds[-1] += total_rounds - base * num_iterations
    return rounds


__all__ = ["QUERY_SCHEDULES", "agent_rounds", "apportion", "comparison_schedule"]
