"""L2-init regularisation (paper Sec. 3.2, Eq. 5; Kumar et al. 2023, "regenerative regularization").

The objective gains a pull towards the initial random weights theta_0 instead of towards the origin:

    L_reg(theta) = L(theta) + lambda * ||theta - theta_0||^2                                (Eq. 5)

a plain sum of squares over all parameters (no 1/2), lambda = 0.01 as in the paper. Kumar et al.'s code
writes 0.5 * lambda * sum (theta - theta_0)^2, so our lambda = 0.01 is their 0.02. An anchor of zeros gives
ordinary L2 regularisation (Sec. 3.2's 'L2').

Two forms, the same update: l2_init_penalty is Eq. 5 as written (autograd through the penalty);
add_l2_init_grad_ adds its gradient 2 * lambda * (theta - theta_0) to .grad after backward, in two
multi-tensor ops and without autograd, which is what a fast training step wants.

Copy this file alone into a project: it imports torch only.
"""
import torch
import torch.nn as nn


def snapshot(model: nn.Module) -> dict:
    """Detached copies of the parameters, by name: the anchor theta_0 (call it right after initialisation)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def l2_init_penalty(model: nn.Module, anchor: dict, lam: float = 0.01) -> torch.Tensor:
    """lambda * sum over parameters of ||theta - theta_0||^2 (Eq. 5), differentiable w.r.t. the model.

    Parameters without an entry in `anchor` are skipped. The sum uses torch's multi-tensor (_foreach) ops:
    a handful of kernels for the whole network instead of a few per parameter, cheap enough for every step."""
    params, anchors = paired(model, anchor)
    if not params:
        return torch.zeros((), device=next(model.parameters()).device)
    return paired_penalty(params, anchors, lam)


def paired_penalty(params: list, anchors: list, lam: float = 0.01) -> torch.Tensor:
    """lambda * sum_i ||params[i] - anchors[i]||^2 (Eq. 5) of non-empty lists as paired() makes them."""
    norms = torch._foreach_norm(torch._foreach_sub(params, anchors))  # one fused reduction per tensor list
    return lam * torch.stack(norms).pow(2).sum()  # Eq. 5


def paired(model: nn.Module, anchor: dict):
    """(parameters, anchors) as two lists in the same order, anchors on the parameters' device and dtype."""
    params = [p for name, p in model.named_parameters() if name in anchor]
    anchors = [anchor[name].to(device=p.device, dtype=p.dtype) for name, p in model.named_parameters()
               if name in anchor]
    return params, anchors


@torch.no_grad()
def add_l2_init_grad_(params: list, anchors: list, lam: float = 0.01):
    """p.grad += 2 * lambda * (p - theta_0) for every parameter: the gradient of Eq. 5's penalty, added after
    loss.backward(). Parameters without a gradient are skipped."""
    pairs = [(p, a) for p, a in zip(params, anchors) if p.grad is not None]
    if pairs:
        grads = [p.grad for p, _ in pairs]
        torch._foreach_add_(grads, torch._foreach_sub([p for p, _ in pairs], [a for _, a in pairs]),
                            alpha=2 * lam)  # d/dtheta of Eq. 5
