"""The learning-rate schedule every training loop here uses: linear warm-up, then cosine decay.

LM training, ViT training and MAGRIP's recovery fine-tune all ramp the rate up over
the first steps (large early updates from a random or freshly pruned start are
unstable) and then decay it along half a cosine to a floor.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, peak: float = 1.0,
                  floor: float = 0.0) -> float:
    """The rate at `step` (from 0) of `total`: up to `peak` over `warmup` steps, then
    down to `floor` at the last step. With peak 1 it is a factor of the base rate."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
