"""Checks of train.py's input, each failing as a one-line UsageError (exit code 2, no traceback): the
configuration (check_config, which reproduce.sh also runs over every planned run before the first), --out
(writable, not a finished run; runlog.log_writer then locks it for one process and checks again), the free space,
the run to stop at (--stop-at-acc-of), the device and its memory, the task's data. None of them writes anything;
the old checkpoint's checks are ckpt.load_old's.
"""
import math
import os
import shutil

import torch

import data as D
from runlog import UsageError, log_path, max_acc_of, read_finished, refuse_finished


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
        *[(0 <= getattr(args, s) < 2 ** 63, f"--{s.replace('_', '-')} must be in [0, 2^63) (a torch seed), got "
           f"{getattr(args, s)}") for s in ("seed", "split_seed")],
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
    refuse_finished(args.out, args.overwrite)


def check_task(batch_size, task, d):
    """Checks that need the task's data (d: data.TaskData): a batch must fit in it (uniform sampling draws each
    batch without replacement from one stream of epochs, so a larger batch would repeat examples within it), and
    its classes must have test images (every evaluation is on them; a folder of one image per class has none)."""
    if batch_size > len(d.y):
        raise UsageError(f"--batch-size {batch_size} is larger than task {task}'s training data "
                         f"({len(d.y)} examples)")
    if len(d.test_y) == 0:
        raise UsageError(f"task {task}'s classes have no test images: nothing to evaluate on")


def stop_accuracy(args):
    """The accuracy at which to stop early (--stop-at-acc-of: that finished run's maximum), or None."""
    if not args.stop_at_acc_of:
        return None
    log = read_finished(args.stop_at_acc_of)
    if log is None:
        raise UsageError(f"--stop-at-acc-of {args.stop_at_acc_of}: no finished run there")
    try:
        return max_acc_of(log_path(args.stop_at_acc_of), log[2])
    except ValueError as e:
        raise UsageError(f"--stop-at-acc-of {e}") from None


def num_weights(width):
    """About how many weights ResNet-18 has at a base width: 11.2M at 64, growing as width^2."""
    return 11.2e6 * (width / 64) ** 2


def memory_needed(width, image_size, batch_size, stem):
    """A lower bound on the bytes that training a ResNet-18 takes: its weights, gradients and Adam's two
    moments in fp32 (num_weights of them), and per image of a batch the
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
