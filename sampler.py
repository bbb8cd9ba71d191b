"""Batch composition: learning speed and the 'easy / hard' and 'old / new' samplers (paper Sec. 3.3, Eq. 6,
App. A.5; Hacohen & Tuytelaars 2024).

Learning speed of a training example is the fraction of epochs in which the model classified it correctly:

    ls(x_j, y_j) = 1/E * sum_{i=1..E} 1[f^i(x_j) = y_j]                                       (Eq. 6)

We record it on the fly while the old model trains: each time an example is in a batch, the prediction of
that (training-mode, augmented) forward pass is counted. Under uniform sampling each example is seen once an
epoch, so times-correct / times-seen is exactly Eq. 6 with f^i = the model when it met the example in epoch
i, at no extra forward passes.

'Easy / hard' sampling: among the old examples, the c/2 with the highest learning speed (easiest) and the
c/2 with the lowest (hardest) are drawn with relative probability r; all other examples have weight 1.
The paper uses c = 0.2 (10% easiest, 10% hardest) and r = 0.1; r = 0 removes them (Hacohen & Tuytelaars).
'Old / new' sampling gives old and new examples equal total probability (Fig. 4).

Copy this file alone into a project: it imports torch only.
"""
import torch


class LearningSpeed:
    """Per-example counts of (times seen, times classified correctly) in training batches; all on `device`."""

    def __init__(self, n, device="cpu"):
        self.seen = torch.zeros(n, device=device)  # float32 counts: exact up to 2^24 and index_add_ everywhere
        self.correct = torch.zeros(n, device=device)

    @torch.no_grad()
    def update(self, indices, correct):
        """indices int64 [B] into the training set; correct bool [B]. Repeated indices each count."""
        self.seen.index_add_(0, indices, torch.ones_like(indices, dtype=self.seen.dtype))
        self.correct.index_add_(0, indices, correct.to(self.correct.dtype))

    def value(self):
        """Learning speed in [0, 1] per example (Eq. 6); 0 for an example never seen (never learned)."""
        return self.correct / self.seen.clamp(min=1)

    def state_dict(self):
        return {"seen": self.seen.cpu(), "correct": self.correct.cpu()}

    def load_state_dict(self, state):
        if state["seen"].shape != self.seen.shape:
            raise ValueError(f"learning speed for {state['seen'].numel()} examples, expected {self.seen.numel()}")
        self.seen.copy_(state["seen"])
        self.correct.copy_(state["correct"])


def easy_hard_weights(learning_speed, is_old, c=0.2, r=0.1):
    """Sampling weights [N]: the floor(c/2 * n_old) easiest and as many hardest old examples get r, all else 1.

    learning_speed float [N] (new examples' values are ignored), is_old bool [N]. Ties are broken by example
    index, reproducibly: among equal learning speeds the lower index ranks as harder."""
    if not 0.0 <= c <= 1.0 or r < 0:
        raise ValueError(f"easy/hard needs 0 <= c <= 1 and r >= 0, got c={c}, r={r}")
    weights = torch.ones(is_old.shape[0], device=is_old.device)
    old = is_old.nonzero().squeeze(1)  # [n_old]
    k = int(c / 2 * old.numel())
    if k == 0:
        return weights
    order = torch.sort(learning_speed[old].float(), stable=True).indices  # ascending: hardest first
    weights[old[order[:k]]] = r  # hardest c/2
    weights[old[order[-k:]]] = r  # easiest c/2
    return weights


def old_new_weights(is_old):
    """Sampling weights [N] giving old and new examples equal total mass (mean weight 1)."""
    n, n_old = is_old.shape[0], int(is_old.sum())
    n_new = n - n_old
    weights = torch.ones(n, device=is_old.device)
    if n_old and n_new:
        weights[is_old] = n / (2 * n_old)
        weights[~is_old] = n / (2 * n_new)
    return weights


def batches(num_examples, batch_size, generator, weights=None):
    """Endless iterator of int64 index batches [batch_size] on the generator's device.

    weights None: uniform without replacement, a fresh permutation each epoch. Permutations are consumed as
    one stream, so every batch is full (an epoch's tail starts the next batch): one tensor shape for the
    whole run, which CUDA graphs and torch.compile need. With weights: i.i.d. draws with replacement,
    P(j) proportional to weights[j]. Nothing here synchronises with the host."""
    device = generator.device
    if weights is not None:
        w = weights.to(device=device, dtype=torch.float)
        if w.shape[0] != num_examples or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("sampling weights must be non-negative, one per example, and not all zero")
        while True:
            yield torch.multinomial(w, batch_size, replacement=True, generator=generator)
    buf = torch.empty(0, dtype=torch.int64, device=device)
    while True:
        while buf.numel() < batch_size:
            buf = torch.cat([buf, torch.randperm(num_examples, device=device, generator=generator)])
        out, buf = buf[:batch_size], buf[batch_size:]
        yield out
