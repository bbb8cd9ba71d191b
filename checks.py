"""Checks of train.py's input, each failing as a one-line UsageError (exit code 2, no traceback): the
configuration (check_config, which reproduce.sh also runs over every planned run before the first), --out
(writable, not a finished run; lock_run then holds it for one process), the device, the task's data and the old
checkpoint (load_old: the same lineage, classes, data and examples). All but the lock write nothing.
"""
import argparse
import hashlib
import math
import os
import shutil

import torch

import data as D
from runlog import is_finished


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block (train.py, reproduce.sh, repro.table)
        self.exit(2, f"{self.prog}: error: {message}\n")


FLOATS = {"sp_alpha": (0, 1), "sp_beta": (0, None), "reg_lambda": (0, None), "eh_c": (0, 1), "eh_r": (0, None),
          "lr": (0, None), "lr_min": (0, None)}  # closed ranges [lo, hi]; schedule_scale is checked as > 0


def check_config(args, num_classes=None):
    """train.py's checks of a configuration that touch no file: the one source of truth that reproduce.sh
    also runs over every planned run before the first. num_classes (if known) checks the split and task."""
    for name, (lo, hi) in FLOATS.items():  # inf and nan pass every comparison-free path: refuse them first
        v, flag = getattr(args, name), "--" + name.replace("_", "-")
        if not math.isfinite(v) or v < lo or (hi is not None and v > hi):
            raise UsageError(f"{flag} must be a finite number in [{lo}, {'inf)' if hi is None else f'{hi}]'}, "
                             f"got {v}")
    checks = [
        (args.dataset in D.DATASETS, f"unknown dataset '{args.dataset}' (choose from {', '.join(D.DATASETS)})"),
        (math.isfinite(args.schedule_scale) and args.schedule_scale > 0,
         f"--schedule-scale must be a finite number > 0, got {args.schedule_scale}"),
        (args.iters > 0, f"--iters must be > 0, got {args.iters}"),
        (args.batch_size >= 2, f"--batch-size must be >= 2 (BatchNorm needs 2 values per channel), got "
                               f"{args.batch_size}"),
        (args.lr > 0 and args.lr_min <= args.lr,
         f"need 0 <= --lr-min <= --lr and --lr > 0, got {args.lr_min}, {args.lr}"),
        (args.eval_every > 0, f"--eval-every must be > 0, got {args.eval_every}"),
        (args.width > 0 and args.image_size > 0, "--width and --image-size must be > 0"),
        (args.per_class >= 0, f"--per-class must be >= 0 (0: every training image), got {args.per_class}"),
        (args.task >= 0, f"--task must be >= 0, got {args.task}"),
        (not (args.sp and args.init != "scratch"),
         "--sp is for --init scratch (use --init shrink_perturb to continue)"),
        (args.init == "scratch" or args.old_ckpt, f"--init {args.init} needs --old-ckpt (the task-1 checkpoint)"),
        (args.init == "scratch" or args.task > 0, f"--init {args.init} needs --task >= 1 (task 0 has no old model)"),
        (not (args.keep_optimizer_state and args.init == "scratch"),
         "--keep-optimizer-state needs --init old or shrink_perturb (a scratch run has no old Adam)"),
        (args.sampler == "uniform" or args.task > 0,
         f"--sampler {args.sampler} needs --task >= 1 (no old examples at task 0)"),
        (args.sampler != "easy_hard" or args.old_ckpt,
         "--sampler easy_hard needs --old-ckpt (learning speed of the old examples)"),
        (args.sampler != "old_new" or args.batch_size >= 2, "--sampler old_new needs --batch-size >= 2"),
        (not (args.compile and args.cuda_graph), "--compile and --cuda-graph: choose one"),
        (args.out.strip() != "", "--out is empty"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    try:  # the split's syntax always; its size and the task's range once the class count is known
        n_tasks = D.num_tasks(args.split, num_classes if num_classes is not None else 10 ** 9)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if D.parse_domains(args.split) and args.dataset != "folder":
        raise UsageError(f"the domain split {args.split} needs --dataset folder (data-dir/<domain>/<class>/*)")
    if args.task >= n_tasks:
        raise UsageError(f"--task {args.task} is out of range: split {args.split} has tasks 0..{n_tasks - 1}")


def nearest_existing(path):
    """`path` or its nearest ancestor that exists: what a folder not yet made would be created in."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


def check_out_writable(path, flag="--out"):
    """That `path` is, or can be made, a folder we can write into, without creating anything (bad input must
    leave no trace): the nearest existing ancestor decides."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} exists and is not a folder")
    probe = nearest_existing(path)
    if not os.path.isdir(probe):
        raise UsageError(f"cannot create {flag} {path}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):  # also false on a read-only mount (EROFS)
        raise UsageError(f"cannot write into {flag} {path}: {probe} is not writable")


def check_space(path, need, what="the run writes"):
    """That the disk of `path` (or of its nearest existing ancestor) has `need` bytes free: a full disk is one
    line up front, not a run that trains to its end and then cannot save."""
    free = shutil.disk_usage(nearest_existing(path)).free
    if free < need:
        raise UsageError(f"{path}: {free / 2 ** 20:,.0f} MiB free on its disk, {what} about "
                         f"{need / 2 ** 20:,.0f} MiB")


def validate(args):
    """Everything that can be checked before the data is loaded: the configuration, --out, a finished run."""
    check_config(args, D.num_classes_of(args.dataset, args.data_dir, args.split))
    check_out_writable(args.out)
    if is_finished(args.out) and not args.overwrite:
        raise UsageError(f"{args.out} already holds a finished run (use --overwrite to replace it)")


def lock_run(out, overwrite=False, what="another training process"):
    """Make --out and lock it for this process (out/.lock, flock: the kernel drops it when the process dies,
    however it dies, so a stale lock file is simply taken over). Returns the handle for unlock_run.

    Two processes training into one folder would both write log.jsonl.part and corrupt it; the second
    gets a one-line error instead. The finished-run check is repeated under the lock: another process may
    have finished this run since validate()."""
    import fcntl

    try:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, ".lock")
        while True:
            f = open(path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                f.close()
                raise UsageError(f"{out} is in use by {what} (pid {holder})") from None
            if os.path.exists(path) and os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                break
            f.close()  # the holder removed the file as we opened it: lock the new one
    except OSError as e:
        raise UsageError(f"cannot write into --out {out}: {e.strerror or e}") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    if is_finished(out) and not overwrite:
        unlock_run(f)
        raise UsageError(f"{out} already holds a finished run (use --overwrite to replace it)")
    return f


def unlock_run(handle):
    """Remove the lock file while holding it (a process waiting on the old file re-checks: see lock_run)."""
    try:
        os.remove(handle.name)
    except OSError:
        pass
    handle.close()


def check_task(args, d):
    """Checks that need the task's data: a batch must fit in it (uniform sampling draws each batch without
    replacement from one stream of epochs, so a larger batch would repeat examples within the batch)."""
    if args.batch_size > len(d.y):
        raise UsageError(f"--batch-size {args.batch_size} is larger than task {args.task}'s training data "
                         f"({len(d.y)} examples)")


def num_weights(width):
    """About how many weights ResNet-18 has at a base width: 11.2M at 64, growing as width^2."""
    return 11.2e6 * (width / 64) ** 2


def memory_needed(width, image_size, batch_size, stem):
    """A lower bound on the bytes that training a ResNet-18 takes: its weights, gradients and Adam's two
    moments in fp32 (about 11.2M weights at width 64, growing as width^2), and per image of a batch the
    activations kept for the backward pass (at 2 bytes, as bf16; the stem's output and about 8 tensors of each
    stage's size; the ImageNet stem shrinks the image 4x). The real need is larger: this refuses only sizes
    that cannot fit."""
    params = num_weights(width)
    s = image_size if stem == "cifar" else image_size / 4
    per_image = 3 * width * s * s + sum(8 * width * 2 ** i * (s / 2 ** i) ** 2 for i in range(4))
    return 16 * params + 2 * batch_size * per_image


def device_memory(dev):
    """Bytes of memory of a torch.device: the GPU's, or the machine's for the CPU (None if unknown)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev.index or 0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(width, image_size, batch_size, stem, dev):
    """Refuse up front a model or batch that cannot fit in the device's memory (memory_needed)."""
    need, have = memory_needed(width, image_size, batch_size, stem), device_memory(dev)
    if have is not None and need > have:
        raise UsageError(f"--width {width}, --image-size {image_size}, --batch-size {batch_size}: training needs "
                         f"at least {need / 2 ** 30:,.0f} GiB of memory, the {dev.type.upper()} has "
                         f"{have / 2 ** 30:,.0f} GiB")


def resolve_device(name):
    """The torch.device of --device (auto: a GPU if there is one)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


def weights_hash(ckpt):
    """sha256 of what a continued run takes from a checkpoint: the weights, their random init (L2-init's
    anchor) and the learning speed. A log records its old model's (train.open_log), so that a run continued
    from an old model that was trained again since is noticed (reproduce.execute)."""
    h = hashlib.sha256()
    for part in ("model", "init", "learning_speed"):
        for name, t in sorted(ckpt[part].items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_old(args, groups, order, ident):
    """--old-ckpt, the task-1 checkpoint, after checking that it belongs to this run's lineage and data (ident:
    the dataset's identity, data.identity) and task, so that it was trained on exactly this task's old examples
    in their order (data.task_data selects them from these alone), and, for easy/hard sampling, recorded their
    learning speed."""
    path = args.old_ckpt
    if os.path.isdir(path):
        inside = os.path.join(path, "ckpt.pt")
        raise UsageError(f"--old-ckpt {path} is a folder: give the checkpoint in it, {inside}"
                         + ("" if os.path.isfile(inside) else " (not there yet: is that run finished?)"))
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} not found")
    mine = {"dataset": args.dataset, "groups": groups, "class_order": order, "width": args.width,
            "image_size": args.image_size, "stem": args.stem}  # the class names are in the data identity
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in ("model", "init", "learning_speed", "task", "data", "config", *mine)
                   if k not in ckpt]
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise UsageError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if missing:
        raise UsageError(f"checkpoint {path} is not a train.py checkpoint (missing {', '.join(missing)})")
    for key, value in mine.items():
        if ckpt[key] != value:
            raise UsageError(f"checkpoint {path} is from a different {key.replace('_', ' ')} "
                             f"({str(ckpt[key])[:60]} vs {str(value)[:60]})")
    what = D.identity_diff(ckpt["data"], ident)
    if what:
        raise UsageError(f"checkpoint {path} was trained on other data ({what} not the same)")
    if ckpt["task"] != args.task - 1:
        raise UsageError(f"checkpoint {path} is of task {ckpt['task']}, task {args.task} needs task {args.task - 1}")
    if args.sampler == "easy_hard" and ckpt["config"].get("learning_speed") == "off":
        raise UsageError(f"checkpoint {path} recorded no learning speed (it ran --learning-speed off)")
    if args.keep_optimizer_state and not ckpt.get("optimizer"):
        raise UsageError(f"--keep-optimizer-state: checkpoint {path} holds no optimizer state (its run recorded no "
                         "learning speed: --learning-speed off)")
    ckpt["weights_sha256"] = weights_hash(ckpt)  # recorded in the log: the lineage this run continues
    return ckpt
