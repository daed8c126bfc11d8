"""A held-out split by prompt: every group of one prompt lands on the same side."""

from __future__ import annotations

import numpy as np

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _uniform(keys: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (key, seed) mapped to [0, 1): a fixed, well-mixed draw per prompt."""
    with np.errstate(over="ignore"):
        x = np.asarray(keys, dtype=np.uint64) + np.uint64(seed % 2**64) * _MIX[0]
        x = (x ^ (x >> np.uint64(30))) * _MIX[1]
        x = (x ^ (x >> np.uint64(27))) * _MIX[2]
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def split_by_prompt(prompt_keys: np.ndarray, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, eval positions): a prompt goes to eval when its draw is below
    `eval_fraction`. It depends only on the prompt and the seed, not on row order, so
    adding rows never moves an existing prompt across the split."""
    held_out = _uniform(prompt_keys, seed) < eval_fraction
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)
