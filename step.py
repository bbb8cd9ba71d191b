"""The training step of train.py (and repro/bench.py): one update (Adam) of Eq. 5's objective, fast on a GPU.

Sec. 2.1 / App. A.2: Adam (betas 0.9, 0.999, no weight decay), cross-entropy, random crop + flip. Sec. 3.2:
L2-init's gradient 2 * lambda * (theta - theta_0) is added after backward (l2init.add_l2_init_grad_). What
makes it fast: the batch is gathered and augmented on the GPU from the uint8 training set (data.Loader), the
forward pass runs under bf16 autocast, Adam is fused, and nothing in the step waits for the host, so the same
body can be recorded once as a CUDA graph and replayed (--cuda-graph).

Between steps, train.py's loop times the passes over the training images that are not training (timed_eval):
the learning speed at each epoch's end (Eq. 6), the final model's training accuracy, and with --grad-norms the
gradient-norm probe (App. A.7).
"""
import time

import torch
import torch.nn.functional as F

import analysis
import data as D
from l2init import add_l2_init_grad_


def forward_backward(model, x, y, reg=None, lam=0.0, amp=None, forward=None):
    """Loss of one batch (Eq. 3's L) and the gradients of Eq. 5's objective in .grad: backward through the
    cross-entropy, then L2-init's gradient 2 * lambda * (theta - theta_0) added directly (reg = l2init.paired
    lists (params, anchors), or None). The forward pass runs under autocast(amp) (bf16 on a GPU), the loss in
    fp32. `forward` is the (maybe compiled) callable of `model`. Returns detached (loss, logits): no host sync."""
    with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None, cache_enabled=False):
        logits = (model if forward is None else forward)(x)  # not `forward or model`: a compiled module
        # proxies len(), and truth-testing it raises "ResNet does not support len()"
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    if reg is not None:
        add_l2_init_grad_(*reg, lam)  # Eq. 5
    return loss.detach(), logits.detach()


def build_step(model, opt, loader, batch_size, reg=None, lam=0.0, amp=None, speed=None, forward=None,
               cuda_graph=False, warmup=3):
    """step(idx, lr): one training step on the batch of training-set indices idx int64 [B] at learning rate lr,
    adding its loss to the returned device scalar loss_sum (and, with `speed`, its predictions to the online
    learning speed). Returns (step, loss_sum).

    Everything a step reads lives in fixed buffers (indices, crop offsets, the learning rate as a device
    tensor), so the same body runs eagerly or, with cuda_graph, is recorded once as a CUDA graph after
    `warmup` eager steps and replayed with one launch per step. Random crops are drawn outside the body from
    the loader's generator, so eager and graphed steps see the same augmentation."""
    if cuda_graph and warmup < 1:  # Adam's state must exist before the capture, or every replay would reset it
        raise ValueError("a graphed step needs at least one eager warm-up step")
    device = loader.device
    lr_t = opt.param_groups[0]["lr"]  # a device tensor (see make_optimizer)
    loss_sum = torch.zeros((), device=device)
    idx_s = torch.zeros(batch_size, dtype=torch.int64, device=device)
    crops_s = (torch.zeros(batch_size, 1, dtype=torch.int64, device=device),  # dy, dx, flip of D.random_crops
               torch.zeros(batch_size, 1, dtype=torch.int64, device=device),
               torch.zeros(batch_size, 1, dtype=torch.bool, device=device))

    def body():
        x, y, _ = loader.batch(idx_s, crops_s)
        opt.zero_grad(set_to_none=True)
        loss, logits = forward_backward(model, x, y, reg, lam, amp, forward)
        opt.step()
        loss_sum.add_(loss)
        if speed is not None:
            speed.update(idx_s, logits.argmax(1) == y)  # Eq. 6, online form

    graph, n = None, 0

    def step(idx, lr):
        nonlocal graph, n
        lr_t.fill_(lr)
        idx_s.copy_(idx)
        for buf, new in zip(crops_s, D.random_crops(len(idx), loader.generator, loader.pad)):
            buf.copy_(new)
        if not cuda_graph:
            body()
            return
        with torch.cuda.device(device):  # capture on the tensors' GPU (torch.cuda.graph's stream is the current one's)
            if n < warmup:  # real steps, on a side stream as torch.cuda.graph wants before a capture
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    body()
                torch.cuda.current_stream(device).wait_stream(side)
            else:
                if graph is None:
                    graph = torch.cuda.CUDAGraph()
                    opt.zero_grad(set_to_none=True)  # .grad is then allocated inside the graph, at fixed addresses
                    with torch.cuda.graph(graph):
                        body()
                graph.replay()
        n += 1

    return step, loss_sum


def make_optimizer(model, lr, device, cuda_graph):
    """Adam (App. A.2: betas 0.9, 0.999, no weight decay) with the learning rate as a device tensor that the
    step writes in place: no host value is baked into a CUDA graph. Fused on a GPU."""
    lr_t = torch.tensor(float(lr), device=device)
    kw = {"fused": True, "capturable": cuda_graph} if device.type == "cuda" else {"foreach": False}
    return torch.optim.Adam(model.parameters(), lr=lr_t, betas=(0.9, 0.999), weight_decay=0, **kw)


def adam_state(model, opt):
    """Adam's per-parameter state by parameter name, on the CPU: what --keep-optimizer-state continues."""
    return {name: {"step": float(opt.state[p]["step"]), "exp_avg": opt.state[p]["exp_avg"].detach().cpu(),
                   "exp_avg_sq": opt.state[p]["exp_avg_sq"].detach().cpu()}
            for name, p in model.named_parameters() if p in opt.state}


def load_adam_state_(model, opt, saved):
    """An old run's Adam moments and step count (adam_state) into opt, for every parameter: Sec. 2.1's
    optimizer continued instead of restarted. The rows of a grown head that are new (Sec. 3.1) start with zero
    moments, as a fresh Adam's. The step count is a float32 tensor on the parameter's device where Adam is fused
    or capturable (the graphed step reads it there), else on the CPU, as torch's Adam keeps it."""
    group = opt.param_groups[0]
    on_device = group.get("fused") or group.get("capturable")
    for name, p in model.named_parameters():
        old = saved[name]
        moments = {}
        for key in ("exp_avg", "exp_avg_sq"):
            buf = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf[: len(old[key])].copy_(old[key])  # the head's first rows are the old classes' (grow_head)
            moments[key] = buf
        step = torch.tensor(old["step"], dtype=torch.float32, device=p.device if on_device else "cpu")
        opt.state[p] = {"step": step, **moments}


# ------------------------------------------------- between steps: timed passes over the training images

def timed_eval(model, device, fn):
    """fn() with the model in eval mode; returns (its result, its seconds). A GPU sync on each side: the steps
    queued before it are training time, not its own (the caller keeps these seconds out of training time)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda device: None)
    sync(device)
    t = time.perf_counter()
    model.eval()
    out = fn()
    model.train()
    sync(device)
    return out, time.perf_counter() - t


def train_correct(model, loader, amp):
    """bool [N]: whether the model classifies each of its training images right, unaugmented (in timed_eval: in
    eval mode)."""
    return D.predict(model, loader.x, loader, autocast_dtype=amp) == loader.y


def record_learning_speed(model, loader, speed, amp):
    """Eq. 6's f^i at the end of an epoch (train_correct, into `speed`). Returns its seconds."""
    return timed_eval(model, loader.device, lambda: speed.record_epoch(train_correct(model, loader, amp)))[1]


def train_accuracy(model, loader, amp):
    """Accuracy (%) of the final model on its own training images (train_correct): whether the budget reached the
    plateau where the model fits its data, as the paper's 100 epochs do."""
    hit = timed_eval(model, loader.device, lambda: train_correct(model, loader, amp))[0]
    return 100.0 * hit.double().mean().item()


def grad_norm_probe(model, loader, d, n_iters, log):
    """probe(it): at the log-spaced iterations of analysis.probe_iterations(n_iters), log the per-example gradient
    norms of a fixed probe of the task's (d: data.task_data) old and new training examples (App. A.7, Fig. 14;
    analysis.grad_norm_summary). Returns the seconds it took (0 elsewhere), so that the caller can keep it out
    of the training time."""
    at = set(analysis.probe_iterations(n_iters))
    idx = analysis.probe_set(d.is_old).to(loader.device)
    x, y = loader.normalize(loader.x[idx]), loader.y[idx]  # unaugmented, as the evaluation sees them
    n_old = int(d.is_old[idx.cpu()].sum())  # probe_set puts the old examples first

    def probe(it):
        if it not in at:
            return 0.0
        # eval mode: BatchNorm's running statistics, so one example's gradient is its own (analysis.py)
        rec, seconds = timed_eval(model, loader.device,
                                  lambda: analysis.grad_norm_summary(model, x, y, n_old, d.num_classes))
        log({"event": "grad_norms", "iter": it, **rec, "num_old_classes": d.num_old_classes, "seconds": seconds})
        return seconds

    return probe
