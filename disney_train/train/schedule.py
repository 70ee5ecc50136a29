"""Where a run is in its schedule: the learning-rate multiplier, the run's progress (0..1) and the steps
of an epoch at a world size. Progress is counted in data or in max_steps, never in steps of the current
world size, so an elastic resize does not bend the curve."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup: int, progress: float, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based), `progress` into
    the run (0..1). Progress is measured in data (epochs) or in max_steps, not in steps of the
    current world size, so an elastic resize does not bend the curve."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return 1.0 - frac
    return 1.0


def run_progress(step: int, max_steps: int | None, epoch: int, consumed: int, num_samples: int, epochs: int) -> float:
    if max_steps is not None:
        return step / max_steps
    return (epoch + consumed / max(1, num_samples)) / epochs


def steps_per_epoch(num_samples: int, world_size: int, batch_size: int, accumulation: int) -> int:
    per_rank = (num_samples - num_samples % world_size) // world_size
    micro = -(-per_rank // batch_size)
    return max(1, micro // accumulation)
