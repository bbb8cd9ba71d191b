"""Shrink-and-perturb initialisation (paper Sec. 3.1, Eq. 4; Ash & Adams 2020, Sec. 4).

Before training on old + new data, every parameter of the old model becomes

    theta_init = alpha * theta_old + beta * theta_random                                    (Eq. 4)

with alpha = 0.4 and beta = 0.001 as in the paper (taken untuned from Ash & Adams). theta_random is a
freshly initialised network of the same architecture: Ash & Adams add "parameters from a scaled,
randomly-initialized network" rather than Gaussian noise, so that each layer's noise has that layer's own
init scale (a BatchNorm weight's random init is 1, a conv kernel's is kaiming-uniform, ...).

BatchNorm running statistics are buffers, not parameters, and are left unchanged, as in Ash & Adams' code
(which loops over model.parameters()). Shrinking a conv kernel scales its pre-BN activations by ~alpha, so
for a short while the running variance is stale by ~alpha^2; but training uses batch statistics and the
running estimates (momentum 0.1) are fully refreshed within a few dozen steps, long before the first
evaluation, while resetting them would throw away the old model's estimate of the input statistics.

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
def shrink_perturb_(model: nn.Module, alpha: float = 0.4, beta: float = 0.001, noise_model: nn.Module = None):
    """In place: theta <- alpha * theta + beta * theta_random for every parameter (Eq. 4). Returns model.

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
    return model
