"""The rounds driver every layer search shares (coordinate descent over a layer's quantizers), FX-free.

A search is a state (the layer's current quantizer choices) and steps: each step re-chooses one
quantizer with the others fixed and returns the new state.  A round applies every step once, in order.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, TypeVar

from .problem import SearchOptions

S = TypeVar("S")


def alternate(state: S, steps: Sequence[Callable[[S], S]], same: Callable[[S, S], bool], opts: SearchOptions,
              objective: Optional[Callable[[S], float]] = None, start: Optional[float] = None) -> Tuple[S, int]:
    """Run up to ``opts.rounds`` rounds of ``steps`` from ``state``.

    Stops after a round that changes no decision (``same(before, after)``: the next round would repeat
    it) and, given ``objective``, after a round that lowers it by no more than ``opts.round_tol`` of its
    value (``start``: the objective at ``state``, when the caller has it already).
    Returns the last state and the number of rounds run."""
    last = None if objective is None else (objective(state) if start is None else start)
    rounds = 0
    for rounds in range(1, opts.rounds + 1):
        new = state
        for step in steps:
            new = step(new)
        unchanged = same(state, new)
        state = new
        if unchanged:
            break
        if objective is not None:
            now = objective(state)
            if last - now <= opts.round_tol * last:
                break
            last = now
    return state, rounds
