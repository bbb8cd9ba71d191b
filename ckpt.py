"""ckpt.pt, the file a run leaves for the next task: written atomically (write_ckpt), its size known before the run
trains (bytes_to_write, for the free-space check), its identity (weights_hash, recorded in the log of every run
continued from it), and read back by a continued run (load_old) only after checking, in one line each, that it
is of this run's lineage, data, examples and task.

What it holds (contents, which train.save_results writes): the weights and their random init (L2-init's
anchor, Sec. 3.2), the learning speed of every training example (Eq. 6, for easy/hard sampling, Sec. 3.3),
Adam's state where the run recorded a learning speed (--keep-optimizer-state), the example index, the class
order and split, the data identity, the configuration and the summary.
"""
import hashlib
import os

import torch

import data as D
from runlog import UsageError, replace_atomic
from step import adam_state


def saves_adam(args):
    """Whether a run's ckpt.pt holds Adam's state (twice the model's size): a run that records a learning speed is
    one a next task may continue from, with --keep-optimizer-state."""
    return args.learning_speed != "off"


def contents(args, task, model, anchor, speed, summary, config, opt):
    """What train.py saves in ckpt.pt: task is train.load_task's, config the run's settled flags."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "init": {k: v.cpu() for k, v in anchor.items()}, "learning_speed": speed.state_dict(),
        "index": task.d.index, "class_order": task.order, "class_names": task.class_names, "groups": task.groups,
        "split": args.split, "domains": task.domains, "dataset": args.dataset, "task": args.task,
        "width": args.width, "stem": args.stem,
        "num_classes": task.d.num_classes, "image_size": args.image_size, "data": task.ident,
        "config": config, "summary": summary, "optimizer": adam_state(model, opt) if saves_adam(args) else None,
    }


def write_ckpt(ckpt, path, before_replace=lambda: None):
    """torch.save(ckpt) to `path` atomically (runlog.replace_atomic: a failed write is an OSError naming `path`),
    through a Python file: torch.save to a path reports a full disk as 'unexpected pos ...', not as ENOSPC.
    before_replace() runs once the new file is whole beside `path`, just before it replaces it: a run that
    overwrites a finished one removes that run's log there (runlog.log_writer's unfinish), not before a write
    that may still fail."""
    def write(tmp):
        with open(tmp, "wb") as f:
            try:
                torch.save(ckpt, f)
            except RuntimeError as e:  # a disk that fills mid-file: torch's zip writer raises over the OSError
                if not isinstance(e.__context__, OSError):
                    raise
                raise e.__context__ from None
        before_replace()

    replace_atomic(path, write)


def weight_copies(args):
    """How many fp32 copies of the model's weights ckpt.pt holds (contents): the weights, their random init (the
    anchor, of the same shapes) and, where saves_adam, Adam's two moments."""
    return 2 + 2 * saves_adam(args)


def bytes_to_write(args, model, n_train, iters):
    """About what a run of `iters` iterations writes (contents): ckpt.pt (weight_copies of the weights, the
    model's buffers, the learning speed and the example index of n_train examples) and its log (under a
    megabyte)."""
    tensors = weight_copies(args) * sum(p.numel() * p.element_size() for p in model.parameters())
    tensors += sum(b.numel() * b.element_size() for b in model.buffers())  # BatchNorm's running statistics
    epochs = iters * args.batch_size // n_train  # those it finishes (train.ends_epoch): a row of bits each
    return tensors + n_train * (8 + 4 + 4) + epochs * (n_train // 8 + 1) + 2 ** 20  # int64 index, 2 fp32 counts


def weights_hash(ckpt):
    """sha256 of what a continued run takes from a checkpoint: the weights, their random init (L2-init's
    anchor) and the learning speed. A log records its old model's (train.log_header), so that a run continued
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
    if not isinstance(ckpt["config"], dict):
        raise UsageError(f"checkpoint {path} is not a train.py checkpoint (its config is not a dict)")
    if args.sampler == "easy_hard" and ckpt["config"].get("learning_speed") == "off":
        raise UsageError(f"checkpoint {path} recorded no learning speed (it ran --learning-speed off)")
    if args.keep_optimizer_state and not ckpt.get("optimizer"):
        raise UsageError(f"--keep-optimizer-state: checkpoint {path} holds no optimizer state (its run recorded no "
                         "learning speed: --learning-speed off)")
    ckpt["weights_sha256"] = weights_hash(ckpt)  # recorded in the log: the lineage this run continues
    return ckpt
