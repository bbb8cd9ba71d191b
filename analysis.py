"""Why the methods work: the measurements behind the paper's App. A.5 (Fig. 11), A.7 (Fig. 14) and A.8
(Fig. 15), as small pure functions; train.py records them, repro/report_analysis.py draws them.

Fig. 11 (App. A.5): the old model's per-epoch correctness of every training example, rows sorted by learning
speed (Eq. 6) exactly as sampler.easy_hard_weights ranks them, so the drawn 10% easiest / hardest cut-offs are
the examples easy/hard sampling down-weights:

    ls_j = 1/E * sum_i 1[f^i(x_j) = y_j];   rows in ascending ls (ties: lower index first, i.e. harder);
    the first floor(c/2 * n) rows are the hardest, the last floor(c/2 * n) the easiest.

Fig. 14 (App. A.7): the mean per-example gradient norm of old and of new examples during the naive run,

    g_j = || d/dtheta CE(f_theta(x_j), y_j) ||_2   over every parameter, one example at a time,

on a fixed probe set (256 old and 256 new training examples drawn with a fixed seed of their own, so probing
consumes none of the run's random numbers and leaves its training unchanged), at log-spaced iterations
0, 1, 2, 5, 10, 20, 50, 100, ... and the last one. Per-example gradients come from torch.func (vmap over
grad of a functional_call), with BatchNorm in eval mode (its running statistics): in training mode an
example's output depends on the other examples of its batch through the batch statistics, so "the gradient
of one example" would not be defined by that example alone. The images are unaugmented and the loss is the
plain cross-entropy in fp32 (the naive run has no regulariser).

Fig. 15 (App. A.8) needs no code here: train.py logs the training loss (mean over each evaluation interval)
and the test loss (mean cross-entropy over the test set) at every evaluation.

Copy this file alone into a project: it imports torch only.
"""
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

PROBE_SIZE = 256  # examples per group (old, new) of Fig. 14's probe set
PROBE_SEED = 0  # the probe set's own generator: the same examples for every run of one task and class order


def probe_set(is_old, n_per_group=PROBE_SIZE, seed=PROBE_SEED):
    """Fig. 14's probe: up to n_per_group old and as many new example indices int64 [<= 2 * n_per_group]
    (old ones first), drawn without replacement from is_old bool [N] by a generator of their own."""
    g = torch.Generator().manual_seed(int(seed))
    picks = []
    for mask in (is_old, ~is_old):
        idx = mask.cpu().nonzero().squeeze(1)
        picks.append(idx[torch.randperm(idx.numel(), generator=g)[:n_per_group]].sort().values)
    return torch.cat(picks)


def probe_iterations(n_iters):
    """Log-spaced iterations 0, 1, 2, 5, 10, 20, 50, ... up to n_iters, and n_iters itself (sorted list)."""
    its, k = {0, n_iters}, 1
    while k <= n_iters:
        its.update(m * k for m in (1, 2, 5) if m * k <= n_iters)
        k *= 10
    return sorted(its)


def per_example_grad_norms(model, x, y, chunk_size=64):
    """g_j = ||grad_theta CE(model(x_j), y_j)||_2 over all parameters, for x float [B,3,H,W] (normalised) and
    y int64 [B]; returns float32 [B] on x's device.

    BatchNorm must be in eval mode (model.eval(): running statistics; see the module docstring). vmap
    materialises one gradient per example of a chunk, so chunk_size bounds the memory (64 x 45 MB at width
    64). Nothing of the model is changed: parameters are read, not written, and .grad is left alone."""
    if model.training:
        raise ValueError("per-example gradients need the model in eval mode (BatchNorm's running statistics)")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_of(p, xj, yj):  # one example: a batch of one, in fp32
        logits = functional_call(model, (p, buffers), (xj.unsqueeze(0),))
        return F.cross_entropy(logits.float(), yj.unsqueeze(0))

    def norm_of(xj, yj):
        g = grad(loss_of)(params, xj, yj)
        return torch.stack([t.pow(2).sum() for t in g.values()]).sum().sqrt()

    return vmap(norm_of, chunk_size=chunk_size)(x, y)


def grad_norm_summary(model, x, y, n_old, num_classes):
    """Fig. 14's record of one probe of x, y (the first n_old examples old, as probe_set orders them): the
    mean per-example gradient norm of the old and of the new examples, their counts, and the mean per class
    (None for a class without probe examples). One host sync."""
    g = per_example_grad_norms(model, x, y)  # [B]
    per_class = torch.zeros(num_classes, device=g.device).index_add_(0, y, g)
    count = torch.bincount(y, minlength=num_classes).float()  # exact: far fewer than 2^24 examples
    vals = torch.cat([g, per_class, count]).tolist()  # the one host sync
    g, per_class, count = vals[:len(y)], vals[len(y):len(y) + num_classes], vals[len(y) + num_classes:]
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    return {"old": mean(g[:n_old]), "new": mean(g[n_old:]), "n_old": n_old, "n_new": len(g) - n_old,
            "per_class": [s / n if n else None for s, n in zip(per_class, count)]}


def learning_speed_rows(learning_speed, c=0.2):
    """Fig. 11's row order and cut-offs for learning speeds float [n] (every example observed, as the exact
    form records): (order int64 [n], ascending learning speed, ties by index, hardest first; k = floor(c/2 * n),
    so rows order[:k] are the hardest and order[n-k:] the easiest, as sampler.easy_hard_weights picks them)."""
    if torch.isnan(learning_speed).any():
        raise ValueError("learning speed missing for some examples (recorded with --learning-speed online?)")
    order = torch.sort(learning_speed.float(), stable=True).indices  # the sort easy_hard_weights uses
    return order, int(c / 2 * learning_speed.numel())
