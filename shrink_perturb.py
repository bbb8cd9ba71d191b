"""Shrink-and-perturb initialisation (paper Sec. 3.1, Eq. 4; Ash & Adams 2020, Sec. 4).

Before training on old + new data, every parameter of the old model becomes

    theta_init = alpha * theta_old + beta * theta_random                                    (Eq. 4)

with alpha = 0.4 and beta = 0.001 as in the paper (taken untuned from Ash & Adams). theta_random is a
freshly initialised network of the same architecture: Ash & Adams add "parameters from a scaled,
randomly-initialized network" rather than Gaussian noise, so that each layer's noise has that layer's own
init scale (a BatchNorm weight's random init is 1, a conv kernel's is kaiming-uniform, ...).

BatchNorm running statistics (buffers, not parameters) are reset to a fresh network's (mean 0, variance 1),
as in Ash & Adams' code (JordanAsh/warm_start, run.py): it builds a new network, writes
shrink * old + perturb * fresh into that network's parameters and trains it, so its buffers are the fresh
ones. keep_bn_stats=True keeps the old model's running estimates instead (stale by ~alpha^2 in variance after
shrinking; training uses batch statistics either way and momentum 0.1 refreshes them in a few dozen steps).

Copy this file alone into a project: it imports torch only.
"""
import copy

import torch
import torch.nn as nn


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every module re-initialised by its own reset_parameters()."""
    noise = copy.deepcopy(model)
    for m in noise.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return noise


@torch.no_grad()
def shrink_perturb_(model: nn.Module, alpha: float = 0.4, beta: float = 0.001, noise_model: nn.Module = None,
                    keep_bn_stats: bool = False):
    """In place: theta <- alpha * theta + beta * theta_random for every parameter (Eq. 4), and BatchNorm running
    statistics reset to a fresh network's unless keep_bn_stats. Returns model.

    noise_model: a network of the same architecture supplying theta_random; when None, a fresh copy of
    `model` (drawn from torch's global RNG, so seed it for reproducibility)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"shrink alpha must be in [0, 1], got {alpha}")
    if beta < 0:
        raise ValueError(f"perturb beta must be >= 0, got {beta}")
    if noise_model is None:
        noise_model = fresh_copy(model)
    noise = dict(noise_model.named_parameters())
    for name, p in model.named_parameters():
        if name not in noise or noise[name].shape != p.shape:
            raise ValueError(f"noise_model does not match model at parameter '{name}'")
        p.mul_(alpha).add_(noise[name].to(p), alpha=beta)  # Eq. 4
    if not keep_bn_stats:  # Ash & Adams return the fresh network, whose running statistics are its own
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.reset_running_stats()
    return model
