"""Learning-rate schedules (paper Sec. 3.4, App. A.2 and A.6).

Cosine annealing (Loshchilov & Hutter 2017) from lr_max = 1e-3 to lr_min = 1e-6 over T = scale * total_iters
iterations, then held at lr_min:

    lr(i) = lr_min + (lr_max - lr_min) * (1 + cos(pi * i / T)) / 2     for i < T,   lr_min after

scale = 1 is the paper's default; 0.25, 0.5 and 0.75 are its shortened schedules ('x0.25' in Table 1).
train.py ends a run where its schedule ends (scale * total_iters iterations: "the most aggressive scheduler used
only 25% of the total iterations"); with --no-stop-at-schedule-end it holds lr_min until total_iters.
'multistep' (App. A.6) divides lr_max by 10 at 50% and 75% of T.

Copy this file alone into a project: it imports the standard library only.
"""
import math


def lr_at(it, total_iters, lr_max=1e-3, lr_min=1e-6, scale=1.0, kind="cosine"):
    """The learning rate of iteration `it` (0-based)."""
    if total_iters <= 0 or scale <= 0:
        raise ValueError(f"need total_iters > 0 and scale > 0, got {total_iters} and {scale}")
    T = scale * total_iters
    if kind == "cosine":
        if it >= T:
            return lr_min
        return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * it / T)) / 2
    if kind == "multistep":
        return lr_max * 0.1 ** ((it >= 0.5 * T) + (it >= 0.75 * T))
    raise ValueError(f"unknown schedule '{kind}' (cosine or multistep)")
