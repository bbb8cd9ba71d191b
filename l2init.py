"""L2-init regularisation (paper Sec. 3.2, Eq. 5; Kumar et al. 2023, "regenerative regularization").

The objective gains a pull towards the initial random weights theta_0 instead of towards the origin:

    L_reg(theta) = L(theta) + lambda * ||theta - theta_0||^2                                (Eq. 5)

a plain sum of squares over all parameters (no 1/2), lambda = 0.01 as in the paper. Its gradient is
2 * lambda * (theta - theta_0). An anchor of zeros gives ordinary L2 regularisation (Sec. 3.2's 'L2').

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
    params, anchors = [], []
    for name, p in model.named_parameters():
        if name in anchor:
            params.append(p)
            anchors.append(anchor[name].to(device=p.device, dtype=p.dtype))
    if not params:
        return torch.zeros((), device=next(model.parameters()).device)
    diffs = torch._foreach_sub(params, anchors)
    norms = torch._foreach_norm(diffs)  # one fused reduction per tensor list
    return lam * torch.stack(norms).pow(2).sum()  # Eq. 5
