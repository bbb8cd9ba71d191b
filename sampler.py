"""Batch composition: learning speed and the 'easy / hard' and 'old / new' samplers (paper Sec. 3.3, Eq. 6,
App. A.5; Hacohen & Tuytelaars 2024).

Learning speed of a training example is "the relative epoch in which a sample is classified correctly":

    ls(x_j, y_j) = 1/E * sum_{i=1..E} 1[f^i(x_j) = y_j]                                       (Eq. 6)

with f^i the model at the end of epoch i. The exact form (`LearningSpeed.record_epoch`) classifies every
training image, unaugmented and in eval mode, at the end of each epoch of the old model, and keeps one bit
per example and epoch (App. A.5's Fig. 11 is drawn from them). The online form (`LearningSpeed.update`)
counts the predictions of the (training-mode, augmented) batches instead: no extra forward passes, and under
uniform sampling also one observation per example and epoch, but of a model in the middle of the epoch.

'Easy / hard' sampling: among the old examples that have a learning speed, the c/2 with the highest (easiest)
and the c/2 with the lowest (hardest) are drawn with relative probability r; all other examples have weight 1.
The paper uses c = 0.2 (10% easiest, 10% hardest) and r = 0.1; r = 0 removes them (Hacohen & Tuytelaars).
'Old / new' sampling "balances old and new examples in each batch" (Fig. 4): half of every batch is old.

Copy this file alone into a project: it imports torch only.
"""
import torch


class LearningSpeed:
    """Per-example counts of (times observed, times classified correctly), on `device`; in the exact form also
    the correctness of every example at the end of every epoch."""

    def __init__(self, n, device="cpu"):
        self.seen = torch.zeros(n, device=device)  # float32 counts: exact up to 2^24 and index_add_ everywhere
        self.correct = torch.zeros(n, device=device)
        self.by_epoch = []  # exact form: bool [N] per finished epoch

    @torch.no_grad()
    def update(self, indices, correct):
        """Online form: indices int64 [B] of a training batch, correct bool [B]. Repeated indices each count."""
        self.seen.index_add_(0, indices, torch.ones_like(indices, dtype=self.seen.dtype))
        self.correct.index_add_(0, indices, correct.to(self.correct.dtype))

    @torch.no_grad()
    def record_epoch(self, correct):
        """Exact form (Eq. 6): correct bool [N], every example classified by the model at the end of an epoch."""
        self.seen += 1
        self.correct += correct
        self.by_epoch.append(correct.bool().clone())

    def value(self):
        """Learning speed in [0, 1] per example (Eq. 6); NaN for an example never observed (no learning speed:
        it must not rank as the hardest)."""
        return torch.where(self.seen > 0, self.correct / self.seen.clamp(min=1), float("nan"))

    def state_dict(self):
        """Counts and, for the exact form, the per-epoch correctness packed 8 examples to a byte: uint8
        [E, ceil(N/8)] (unpack_bits(packed, N) gives bool [E, N])."""
        bits = torch.stack(self.by_epoch) if self.by_epoch else torch.zeros(0, self.seen.numel(), dtype=torch.bool)
        return {"seen": self.seen.cpu(), "correct": self.correct.cpu(), "correct_by_epoch": pack_bits(bits.cpu())}

    def load_state_dict(self, state):
        if state["seen"].shape != self.seen.shape:
            raise ValueError(f"learning speed for {state['seen'].numel()} examples, expected {self.seen.numel()}")
        self.seen.copy_(state["seen"])
        self.correct.copy_(state["correct"])
        packed = state.get("correct_by_epoch")
        bits = unpack_bits(packed, self.seen.numel()) if packed is not None else []
        self.by_epoch = [row.to(self.seen.device) for row in bits]


def pack_bits(bits):
    """bool [E, N] -> uint8 [E, ceil(N/8)]; example j of a row is bit j % 8 (least significant first) of byte j // 8."""
    E, N = bits.shape
    padded = torch.zeros(E, -(-N // 8) * 8, dtype=torch.uint8)
    padded[:, :N] = bits
    weights = 2 ** torch.arange(8, dtype=torch.uint8)  # [8]
    return (padded.view(E, padded.shape[1] // 8, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed, n):
    """uint8 [E, ceil(n/8)] -> bool [E, n] (the inverse of pack_bits)."""
    weights = 2 ** torch.arange(8, dtype=torch.uint8)
    return ((packed.unsqueeze(-1) & weights) != 0).reshape(packed.shape[0], packed.shape[1] * 8)[:, :n]


def easy_hard_weights(learning_speed, is_old, c=0.2, r=0.1):
    """Sampling weights [N]: of the old examples with a learning speed (not NaN), the floor(c/2 * n) easiest
    and as many hardest get r, all else 1.

    learning_speed float [N] (new examples' values are ignored), is_old bool [N]. Ties are broken by example
    index, reproducibly: among equal learning speeds the lower index ranks as harder."""
    if not 0.0 <= c <= 1.0 or r < 0:
        raise ValueError(f"easy/hard needs 0 <= c <= 1 and r >= 0, got c={c}, r={r}")
    weights = torch.ones(is_old.shape[0], device=is_old.device)
    ranked = (is_old & ~torch.isnan(learning_speed.float())).nonzero().squeeze(1)  # [n]: unseen ones left out
    k = int(c / 2 * ranked.numel())
    if k == 0:
        return weights
    order = torch.sort(learning_speed[ranked].float(), stable=True).indices  # ascending: hardest first
    weights[ranked[order[:k]]] = r  # hardest c/2
    weights[ranked[order[-k:]]] = r  # easiest c/2
    return weights


def old_new_weights(is_old):
    """Sampling weights [N] giving old and new examples equal total mass (mean weight 1); for draws with
    replacement. balanced_batches() makes every batch exactly half old."""
    n, n_old = is_old.shape[0], int(is_old.sum())
    n_new = n - n_old
    weights = torch.ones(n, device=is_old.device)
    if n_old and n_new:
        weights[is_old] = n / (2 * n_old)
        weights[~is_old] = n / (2 * n_new)
    return weights


def _batched(chunks, batch_size):
    """Consume an endless stream of index chunks as full batches [batch_size]: a chunk's tail starts the next
    batch, so every batch has the same shape for the whole run (CUDA graphs and torch.compile need that)."""
    buf = None
    for chunk in chunks:
        buf = chunk if buf is None else torch.cat([buf, chunk])
        while buf.numel() >= batch_size:
            out, buf = buf[:batch_size], buf[batch_size:]
            yield out


def _permutations(n, generator):
    while True:
        yield torch.randperm(n, device=generator.device, generator=generator)


def _pseudo_epochs(p, generator):
    """Each pseudo-epoch: a random order of the examples, each kept with probability p[j] (at most once)."""
    n = p.numel()
    while True:
        perm = torch.randperm(n, device=generator.device, generator=generator)
        keep = torch.rand(n, device=generator.device, generator=generator) < p[perm]
        yield perm[keep]  # one host sync per pseudo-epoch (its size), none per batch


def batches(num_examples, batch_size, generator, weights=None, replacement=False):
    """Endless iterator of int64 index batches [batch_size] on the generator's device.

    weights None: uniform without replacement, a fresh permutation each epoch.
    weights, replacement=False: pseudo-epochs without replacement: in each, every example appears at most once,
    with probability weights[j] / max(weights), in random order (equal weights give plain epochs, so a weighted
    run differs from a uniform one only in the weights).
    weights, replacement=True: i.i.d. draws with replacement, P(j) proportional to weights[j]."""
    device = generator.device
    if weights is None:
        yield from _batched(_permutations(num_examples, generator), batch_size)
        return
    w = weights.to(device=device, dtype=torch.float)
    if w.shape[0] != num_examples or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("sampling weights must be non-negative, one per example, and not all zero")
    if replacement:
        while True:
            yield torch.multinomial(w, batch_size, replacement=True, generator=generator)
    yield from _batched(_pseudo_epochs(w / w.max(), generator), batch_size)


def balanced_batches(is_old, batch_size, generator):
    """'Old / new' sampling: every batch [batch_size] holds exactly batch_size // 2 old examples (first) and the
    rest new ones, each part drawn without replacement in epochs of its own."""
    old, new = is_old.nonzero().squeeze(1), (~is_old).nonzero().squeeze(1)
    if not old.numel() or not new.numel():
        raise ValueError("old / new sampling needs both old and new examples")
    old, new = old.to(generator.device), new.to(generator.device)
    n_old = batch_size // 2
    olds = _batched((old[p] for p in _permutations(old.numel(), generator)), n_old)
    news = _batched((new[p] for p in _permutations(new.numel(), generator)), batch_size - n_old)
    while True:
        yield torch.cat([next(olds), next(news)])
