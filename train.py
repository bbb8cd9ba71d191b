"""Train one model of the paper's protocol: an old model, a continued model, or a scratch model.

    python train.py --task 0 --out runs/old                                   # the old model (70 classes)
    python train.py --task 1 --init shrink_perturb --old-ckpt runs/old/ckpt.pt \\
        --reg l2init --sampler easy_hard --schedule-scale 0.25 --out runs/ours   # all four methods (Table 1)
    python train.py --task 1 --out runs/scratch                               # the scratch reference

Reads like a recipe, its steps in the order main() takes them: data (data.py), the starting point (Sec. 3.1,
shrink_perturb.py), the objective (Sec. 3.2, l2init.py), the batches (Sec. 3.3, sampler.py), the learning rate and
the run's length (Sec. 3.4, schedule.py), the loop over the training step (step.py), the results; then main(); then
the command line (argparse with the paper's defaults of App. A.2, row labels, device settings; bad input is refused
in one line by checks.py). A run records the learning speed of all its training examples (Eq. 6) so that the next
task can sample by it (unless --learning-speed off), and writes log.jsonl (header, one line per evaluation, summary)
and ckpt.pt into --out, both atomically (runlog.py, ckpt.py).
"""
import argparse
import errno
import math
import os
import platform
import subprocess
import sys
import time
import types

import torch

from checks import (UsageError, check_memory, check_space, check_task, resolve_device, stop_accuracy,
                    validate)
from ckpt import bytes_to_write, contents, load_old, write_ckpt
import data as D
from l2init import paired, paired_penalty, snapshot
from resnet import STEMS, grow_head, resnet18, stem_for
from runlog import OneLineParser, log_writer
from sampler import LearningSpeed, balanced_batches, batches, easy_hard_weights, old_new_weights
from schedule import lr_at
from shrink_perturb import shrink_perturb_
from step import (build_step, grad_norm_probe, load_adam_state_, make_optimizer, record_learning_speed,
                  train_accuracy)

HERE = os.path.dirname(os.path.abspath(__file__))
# config keys of seeds (init, data order, class order), paths and how a run executes: runs that differ only in these
# are seeds of one row of a table (--grad-norms only observes: App. A.7's probe runs between steps with its own
# generator, so a run with it trains exactly as one without; reproduce.check_matches checks it separately)
NOT_METHOD = ("seed", "split_seed", "out", "overwrite", "device", "compile", "cuda_graph", "label", "data_dir",
              "old_ckpt", "stop_at_acc_of", "download", "quiet", "grad_norms")
AMP = {"bf16": torch.bfloat16, "fp32": None}  # autocast dtype of the forward pass (None: plain fp32)


# ------------------------------------------------------------------------------- the recipe, in main()'s order

def load_task(args):
    """The dataset, the class split and order, this task's data (data.py) and the old checkpoint, if any."""
    domains = D.parse_domains(args.split)  # a new domain (Sec. 4.3) instead of new classes
    try:
        train, test, class_names = D.load_for_split(args.dataset, args.data_dir, args.split, args.image_size,
                                                    args.download, args.per_class)
    except (ValueError, RuntimeError, OSError) as e:
        raise UsageError(f"{args.dataset} at {args.data_dir}: {str(e).splitlines()[0]}") from None
    # the split and task were checked against the class count (checks.check_config): nothing left to refuse here
    groups, order, d = D.select_task(train, test, len(class_names), args.split, args.split_seed, args.task)
    ident = D.identity(train, test, class_names, domains, args.per_class)  # compared with finished runs, checkpoints
    check_task(args.batch_size, args.task, d)
    old = load_old(args, groups, order, ident) if args.old_ckpt else None
    if args.sampler == "easy_hard" and not old["learning_speed"]["seen"].any() and not args.quiet:
        print(f"train.py: note: {args.old_ckpt} trained less than one epoch, so no example has a learning speed "
              "and easy/hard sampling leaves every weight at 1", flush=True)
    return types.SimpleNamespace(train=train, test=test, class_names=class_names, groups=groups, order=order,
                                 d=d, old=old, ident=ident, domains=domains)


def starting_point(args, task):
    """The model to train (Sec. 3.1) and the L2-init anchor theta_0 of its lineage (Sec. 3.2), on the CPU."""
    d, k = task.d, task.d.num_old_classes
    torch.manual_seed(args.seed)
    if args.init == "scratch":
        model = resnet18(d.num_classes, args.width, args.stem)
        anchor = snapshot(model)  # the lineage's random init is this model's own
    else:
        model = resnet18(k, args.width, args.stem)
        model.load_state_dict(task.old["model"])
        grow_head(model, d.num_classes)  # old rows copied, new rows freshly initialised (none for a new domain)
        anchor = dict(task.old["init"])  # the old model's own random init ...
        anchor["fc.weight"] = torch.cat([anchor["fc.weight"][:k], model.fc.weight.detach()[k:]])
        anchor["fc.bias"] = torch.cat([anchor["fc.bias"][:k], model.fc.bias.detach()[k:]])  # ... new rows: theirs
    if args.init == "shrink_perturb" or args.sp:  # --sp: shrink-perturb a scratch init too (Table 1)
        shrink_perturb_(model, args.sp_alpha, args.sp_beta, keep_bn_stats=args.sp_keep_bn_stats)  # Eq. 4
    return model, anchor


def objective(args, model, anchor):
    """Eq. 5's (params, anchors on the model's device) for add_l2_init_grad_, or None for the plain loss."""
    if args.reg == "none":
        return None
    if args.reg == "l2":  # plain L2: the anchor is the origin
        anchor = {n: torch.zeros_like(t) for n, t in anchor.items()}
    return paired(model, anchor)


def batch_indices(args, task, device):
    """The stream of training batches (Sec. 3.3): uniform, old/new (half of each batch old) or easy/hard."""
    d = task.d
    gen = torch.Generator(device=device).manual_seed(args.seed)
    if args.sampler == "uniform":
        return batches(len(d.y), args.batch_size, gen)
    if args.sampler == "old_new":
        if args.replacement:
            return batches(len(d.y), args.batch_size, gen, old_new_weights(d.is_old.to(device)), replacement=True)
        return balanced_batches(d.is_old.to(device), args.batch_size, gen)
    ls_old = LearningSpeed(int(d.is_old.sum()))
    ls_old.load_state_dict(task.old["learning_speed"])
    ls_all = torch.full((len(d.y),), float("nan"))
    ls_all[d.is_old] = ls_old.value()  # the old model's learning speed of each old example (Eq. 6)
    weights = easy_hard_weights(ls_all, d.is_old, args.eh_c, args.eh_r)
    return batches(len(d.y), args.batch_size, gen, weights.to(device), replacement=args.replacement)


def run_length(args):
    """Iterations this run trains: --iters, or only the schedule's scale * iters with --stop-at-schedule-end."""
    if args.stop_at_schedule_end and args.schedule_scale < 1:
        return max(1, math.ceil(args.schedule_scale * args.iters))
    return args.iters


def lr_of(args, it):
    return lr_at(it, args.iters, args.lr, args.lr_min, args.schedule_scale, args.schedule)


def log_header(args, task, config, device, target):
    """The first line of the run's log.jsonl: its configuration, data, lineage (the old model's weights and the
    accuracy it stops at, target) and versions."""
    d = task.d
    header = {
        "event": "header", "label": config["label"], "config": config,
        "group": {k: v for k, v in config.items() if k not in NOT_METHOD},
        "groups": task.groups, "domains": task.domains, "class_order": task.order, "class_names": task.class_names,
        "num_classes": d.num_classes, "num_old_classes": d.num_old_classes,
        "num_train": len(d.y), "num_train_old": int(d.is_old.sum()), "num_test": len(d.test_y),
        "num_test_all": len(task.test[1]), "planned_iters": run_length(args), "data": task.ident,
        "old_weights_sha256": task.old["weights_sha256"] if task.old else None,  # ckpt.weights_hash
        "stop_at_acc": target,  # --stop-at-acc-of's max_acc as this run read it (reproduce.lineage_change)
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "git_commit": git_commit(),
                     "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else platform.processor() or "cpu"},
    }
    return header


def ends_epoch(it, batch_size, n_train):
    """Whether step `it` (0-based) completes an epoch: the images seen, (it + 1) * batch_size, pass a multiple
    of n_train. With 10 images and batches of 4: steps 2 (12 images), 4 (20) and 7 (32), not 5 (24)."""
    return (it + 1) * batch_size // n_train > it * batch_size // n_train


def train_loop(args, task, parts, log):
    """Sec. 3.4's schedule over run_length(args) iterations; an evaluation every --eval-every (two host syncs:
    the interval's mean training loss, which also times its steps, and the evaluation's results), the exact
    learning speed (Eq. 6) at every epoch's end, an early stop at `parts.target`, and with --grad-norms the
    per-example gradient norms of a probe at log-spaced iterations (App. A.7). `parts` holds what main() built:
    model, loader, step and its loss_sum, batches, speed (the learning speed), reg (Eq. 5's pairs or None),
    target (the accuracy to stop at or None).
    Returns (best (acc, iter), last acc, iterations run, wall seconds, training seconds, learning-speed seconds);
    training seconds leave out evaluations, the learning-speed passes and the probe."""
    model, loader, speed, reg = parts.model, parts.loader, parts.speed, parts.reg
    step, loss_sum = parts.step, parts.loss_sum
    amp = AMP[args.amp]
    n_iters, n_train = run_length(args), len(loader.y)
    test_x, test_y = task.d.test_x.to(loader.device), task.d.test_y.to(loader.device)
    group, t = task.d.test_group.to(loader.device), args.task  # the task each test example arrived at
    seen = task.domains[: t + 1] if task.domains else []  # a domain split also reports each domain's accuracy
    masks = torch.stack([group >= 0, group < t, group == t] + [group == k for k in range(len(seen))])  # [3+D, N]

    @torch.no_grad()
    def evaluate(it, **rest):
        """Log iteration `it`'s evaluation line: accuracy (%) on all, old and new classes (or domains) seen so far,
        then on each domain; the mean test loss (Fig. 15); Eq. 5's penalty (None without reg); `rest`. One host
        sync for all of them. Returns the accuracy on all."""
        model.eval()
        pred, loss_total = D.predict(model, test_x, loader, autocast_dtype=amp, y=test_y)  # loss: Fig. 15
        hit = pred == test_y
        model.train()
        penalty = torch.zeros((), device=loader.device) if reg is None else paired_penalty(*reg, args.reg_lambda)
        counts = torch.cat([(masks & hit).sum(1), masks.sum(1)]).double()  # integer counts, exact in float64
        *counts, loss_total, penalty = torch.cat([counts, torch.stack([loss_total, penalty]).double()]).tolist()
        # percentages from the integer counts (float32 means print as 34.99999)
        accs = [100.0 * h / n if n else None for h, n in zip(counts[:len(masks)], counts[len(masks):])]
        per_domain = {"acc_domain": dict(zip(seen, accs[3:]))} if seen else {}
        log({"event": "eval", "iter": it, "acc": accs[0], "acc_old": accs[1], "acc_new": accs[2], **per_domain,
             "test_loss": loss_total / len(test_y), "reg_loss": None if reg is None else penalty, **rest})
        return accs[0]

    acc = evaluate(0, loss=None, lr=lr_of(args, 0), wall=0.0, train_seconds=0.0, images_per_s=None)  # the start
    probe = grad_norm_probe(model, loader, task.d, n_iters, log) if args.grad_norms else None  # App. A.7
    if probe is not None:
        probe(0)
    best, n_since, train_seconds, record_seconds = (acc, 0), 0, 0.0, 0.0
    t0 = tick = time.perf_counter()  # evaluate and the probe leave the model in train mode
    for it in range(n_iters):
        step(next(parts.batches), lr_of(args, it))
        n_since += 1
        if probe is not None:
            tick += probe(it + 1)  # between steps, never inside the (graphed) step; not training time
        if args.learning_speed == "exact" and ends_epoch(it, args.batch_size, n_train):
            ls_seconds = record_learning_speed(model, loader, speed, amp)  # the end of an epoch (Eq. 6)
            tick, record_seconds = tick + ls_seconds, record_seconds + ls_seconds  # bookkeeping, not training
        if (it + 1) % args.eval_every and it + 1 != n_iters:
            continue
        mean_loss = (loss_sum / n_since).item()  # a host sync: waits for the interval's steps, so it times them
        now = time.perf_counter()
        train_seconds += now - tick
        if not math.isfinite(mean_loss):
            log({"event": "error", "iter": it + 1, "error": f"non-finite training loss ({mean_loss})"})
            raise FloatingPointError(f"training loss became {mean_loss} before iteration {it + 1}; "
                                     f"the log so far is in {log.path}")
        ips = n_since * args.batch_size / (now - tick)
        acc = evaluate(it + 1, loss=mean_loss, lr=lr_of(args, it), wall=now - t0, train_seconds=train_seconds,
                       images_per_s=ips)
        if acc > best[0]:
            best = (acc, it + 1)
        if not args.quiet:
            eta = (n_iters - it - 1) * train_seconds / (it + 1)
            print(f"{args.label} | it {it + 1:6d}/{n_iters} | acc {acc:6.2f} | loss {mean_loss:.4f} "
                  f"| {ips / args.batch_size:6.1f} it/s | eta {eta / 60:5.1f} min", flush=True)
        loss_sum.zero_()
        n_since, tick = 0, time.perf_counter()
        if parts.target is not None and acc >= parts.target:
            break  # --stop-at-acc-of: the reference's accuracy is reached; the run ends (and is charged) here
    return best, acc, it + 1, time.perf_counter() - t0, train_seconds, record_seconds


class WriteError(Exception):
    """A file of the run could not be written (a full disk): one line, exit code 1."""


def save_results(args, task, model, anchor, speed, summary, config, log, opt):
    """ckpt.pt first (ckpt.contents, atomic), then the summary line; leaving log_writer's block renames the log,
    the mark of a finished run."""
    write_ckpt(contents(args, task, model, anchor, speed, summary, config, opt), os.path.join(args.out, "ckpt.pt"),
               before_replace=log.unfinish)  # --overwrite: the finished run's log goes only as its ckpt.pt is replaced
    log(summary)


def main(args):
    """Run one training job; returns the summary dict. Raises UsageError on bad input."""
    t_start = time.perf_counter()
    validate(args)
    device = resolve_device(args.device)
    settle_for_device(args, device)
    check_memory(args.width, args.image_size, args.batch_size, args.stem, device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: pick the fastest conv algorithms once
    target = stop_accuracy(args)
    task = load_task(args)                                                        # data (Sec. 2.1)
    model, anchor = starting_point(args, task)                                    # Sec. 3.1, Eq. 4
    check_space(args.out, bytes_to_write(args, model, len(task.d.y), run_length(args)))  # before any device work
    model = model.to(device, memory_format=torch.channels_last)
    reg = objective(args, model, anchor)                                          # Sec. 3.2, Eq. 5
    batch_iter = batch_indices(args, task, device)                                # Sec. 3.3
    mean, std = D.channel_stats(task.train[0], device)  # of the whole training set: one normalisation for all tasks
    loader = D.Loader(task.d.x, task.d.y, device, seed=args.seed + 1, mean=mean, std=std)
    speed = LearningSpeed(len(task.d.y), device)                                  # Eq. 6, for the next task
    opt = make_optimizer(model, args.lr, device, args.cuda_graph)                # App. A.2
    if args.keep_optimizer_state:  # the old run's Adam (docs/choices.md: optimizer of a continued run)
        load_adam_state_(model, opt, task.old["optimizer"])
    step, loss_sum = build_step(model, opt, loader, args.batch_size, reg, args.reg_lambda, AMP[args.amp],
                                speed if args.learning_speed == "online" else None,
                                torch.compile(model) if args.compile else None, args.cuda_graph)
    config = dict(vars(args))  # what ran, settled for the device
    setup_seconds = time.perf_counter() - t_start
    if not args.quiet:
        print(f"{args.label} | set-up {setup_seconds:.1f} s (data, model, statistics) on {device}", flush=True)
    parts = types.SimpleNamespace(model=model, loader=loader, step=step, loss_sum=loss_sum, batches=batch_iter,
                                  speed=speed, reg=reg, target=target)
    try:  # the log is closed however the run ends; after a failed write (OSError) no half-written run is left
        with log_writer(args.out, args.overwrite) as log:  # one process per run folder
            log(log_header(args, task, config, device, target))
            best, acc, iters_run, wall, train_seconds, ls_seconds = train_loop(args, task, parts, log)  # Sec. 3.4
            summary = {"event": "summary", "max_acc": best[0], "max_acc_iter": best[1], "final_acc": acc,
                       "iters": iters_run, "wall": wall, "train_seconds": train_seconds,
                       "setup_seconds": setup_seconds, "learning_speed_seconds": ls_seconds,
                       "train_acc": train_accuracy(model, loader, AMP[args.amp])}
            save_results(args, task, model, anchor, speed, summary, config, log, opt)
    except OSError as e:  # a full disk, a lost mount: one line naming the file
        raise WriteError(f"cannot write {e.filename or args.out}: {e.strerror or e} "
                         f"({errno.errorcode.get(e.errno, e.errno)}); the run is not finished") from None
    return summary


# ------------------------------------------------------------------ the command line: flags, labels, device, git

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # no "(default: None)" on flags without a default; 0 is a default
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def build_parser():
    p = OneLineParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    # data (Sec. 2.1)
    a("--dataset", default="cifar100",
      help="cifar100, cifar10, or folder (data-dir/train/<class>/* and data-dir/test/<class>/*, or "
           "data-dir/<class>/* split 80/20 per class; with a domain split data-dir/<domain>/ holds either)")
    a("--data-dir", default="data", help="where the dataset is (or is downloaded to)")
    a("--download", action=argparse.BooleanOptionalAction, default=True, help="download CIFAR if missing")
    a("--image-size", type=int, default=32,
      help="images are resized to this: folder datasets whole (squashed), CIFAR antialiased, once at load")
    a("--per-class", type=int, default=0,
      help="train on this many images of each class (a fixed seeded subset, the same for every run; 0: all)")
    a("--stem", default="auto", choices=["auto", *STEMS],
      help="ResNet-18 stem: cifar (3x3, stride 1), imagenet (7x7 stride 2 + max-pool); auto: cifar up to "
           "--image-size 32, imagenet above")
    a("--split", default="70+30", help="class groups, e.g. 70+30, 80+10+10, 50+5x10; or domains (Sec. 4.3), "
                                       "e.g. product_images+real_life: folders of data-dir, one per task")
    a("--split-seed", type=int, default=0, help="seed of the class order")
    a("--task", type=int, default=0, help="train on the cumulative data of groups 0..task (0 = the old model)")
    # initialisation (Sec. 3.1, Eq. 4)
    a("--init", default="scratch", choices=["scratch", "old", "shrink_perturb"], help="starting point")
    a("--old-ckpt", help="ckpt.pt of task-1 (for --init old / shrink_perturb and for --sampler easy_hard)")
    a("--sp", action="store_true",
      help="with --init scratch: shrink-perturb the random init too (Table 1's Scratch column)")
    a("--sp-alpha", type=float, default=0.4, help="shrink factor alpha of Eq. 4")
    a("--sp-beta", type=float, default=0.001, help="perturb factor beta of Eq. 4")
    a("--sp-keep-bn-stats", action="store_true",
      help="keep the old BatchNorm running statistics (default: reset to a fresh network's, as Ash & Adams)")
    a("--keep-optimizer-state", action="store_true",
      help="with --init old / shrink_perturb: continue the old run's Adam moments and step count (its ckpt.pt "
           "holds them when it recorded a learning speed); the new head rows' moments start at 0. Default: a "
           "fresh Adam")
    # objective (Sec. 3.2, Eq. 5)
    a("--reg", default="none", choices=["none", "l2", "l2init"],
      help="l2: towards 0; l2init: towards the lineage's random init")
    a("--reg-lambda", type=float, default=0.01, help="lambda of Eq. 5")
    # batches (Sec. 3.3, Eq. 6)
    a("--sampler", default="uniform", choices=["uniform", "old_new", "easy_hard"], help="how batches are drawn")
    a("--eh-c", type=float, default=0.2,
      help="easy/hard: fraction of old examples down-weighted (half easiest, half hardest)")
    a("--eh-r", type=float, default=0.1, help="easy/hard: their relative sampling weight (0 removes them)")
    a("--replacement", action="store_true",
      help="weighted sampling draws with replacement (default: without, in pseudo-epochs)")
    a("--learning-speed", default="exact", choices=["exact", "online", "off"],
      help="Eq. 6 for the next task: exact (eval pass over the training images every epoch), online (counted "
           "on the training batches), off (not recorded)")
    # schedule (Sec. 3.4, App. A.2, A.6)
    a("--schedule", default="cosine", choices=["cosine", "multistep"], help="learning-rate schedule")
    a("--schedule-scale", type=float, default=1.0, help="the schedule ends after scale*iters (x0.25, x0.5, x0.75)")
    a("--iters", type=int, default=39100, help="training iterations of the full (x1) schedule")
    a("--stop-at-schedule-end", action=argparse.BooleanOptionalAction, default=True,
      help="a shortened schedule ends the run (scale * iters iterations); --no-...: hold lr-min to --iters")
    a("--stop-at-acc-of", metavar="RUN", help="stop at the first evaluation reaching that finished run's max accuracy")
    a("--batch-size", type=int, default=128, help="examples per training step")
    a("--lr", type=float, default=1e-3, help="Adam learning rate at the start")
    a("--lr-min", type=float, default=1e-6, help="learning rate at the end of the cosine schedule")
    # run
    a("--seed", type=int, default=0, help="seed of init, data order and augmentation")
    a("--eval-every", type=int, default=200, help="evaluate on the test set every this many iterations")
    a("--width", type=int, default=64, help="ResNet-18 base width (64 is the paper's)")
    a("--out", default="runs/run", help="output folder for log.jsonl and ckpt.pt")
    a("--overwrite", action="store_true",
      help="replace a finished run in --out (it is kept until this run saves its own)")
    a("--label", help="row name in the tables (repro.table) (default: 'old' for --task 0, 'scratch', 'continuous' for "
                       "--init old, else made from the method flags)")
    a("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    a("--amp", default="auto", choices=["auto", "bf16", "fp32"],
      help="precision of the forward pass: auto = bf16 autocast on a GPU, fp32 on a CPU")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
      help="record the training step as one CUDA graph (default: on a GPU, unless --compile; --no-cuda-graph: eager)")
    a("--quiet", action="store_true", help="no progress lines")
    a("--grad-norms", action="store_true",
      help="log the mean per-example gradient norm of a fixed probe of 256 old and 256 new training examples at "
           "log-spaced iterations (App. A.7, Fig. 14); changes nothing of the training")
    return p


def parse_or_raise(argv):
    """build_parser().parse_args(argv), with bad input raised as UsageError rather than exiting: reproduce.sh
    checks its planned command lines with it."""
    p = build_parser()

    def error(message):
        raise UsageError(message)

    p.error = error
    return p.parse_args(argv)


def default_label(args):
    """A row name from the method flags: 'shrink_perturb + l2init + easy_hard + x0.25'; the old model (task 0)
    is 'old' and plain continuation 'continuous', as in the plans (so the two never share a row)."""
    first = "old" if args.task == 0 else {"old": "continuous"}.get(args.init, args.init)
    parts = [first + ("+sp" if args.sp else "")]
    if args.init != "scratch" or args.sp:
        parts += [f"alpha={args.sp_alpha:g}"] * (args.sp_alpha != 0.4)
        parts += [f"beta={args.sp_beta:g}"] * (args.sp_beta != 0.001)
    if args.reg != "none":
        parts.append(args.reg + (f"(lambda={args.reg_lambda:g})" if args.reg_lambda != 0.01 else ""))
    if args.init != "scratch" or args.sp:
        parts += ["keep-bn-stats"] * args.sp_keep_bn_stats
    parts += ["adam-state"] * args.keep_optimizer_state
    if args.sampler != "uniform":
        parts.append(args.sampler + (f"(c={args.eh_c:g},r={args.eh_r:g})" if args.sampler == "easy_hard"
                                     and (args.eh_c, args.eh_r) != (0.2, 0.1) else "")
                     + " with replacement" * args.replacement)
    if args.schedule != "cosine":
        parts.append(args.schedule)
    if args.schedule_scale != 1:
        parts.append(f"x{args.schedule_scale:g}" + " (held)" * (not args.stop_at_schedule_end))
    return " + ".join(parts)


def settle_for_device(args, dev):
    """--amp auto and --cuda-graph for the device, --stem auto for the image size, and the default label,
    written into args so that the log records what ran."""
    if args.stem == "auto":
        args.stem = stem_for(args.image_size)
    if args.amp == "auto":
        args.amp = "bf16" if dev.type == "cuda" else "fp32"
    if args.cuda_graph is None:  # graphed = eager in the GPU tests, and 3.5-4.2x faster (docs/speed.md)
        args.cuda_graph = dev.type == "cuda" and not args.compile  # a graph around torch.compile: never tested
    elif args.cuda_graph and dev.type != "cuda":
        if not args.quiet:
            print("train.py: --cuda-graph needs a GPU; running the same step eagerly", flush=True)
        args.cuda_graph = False
    args.label = args.label or default_label(args)


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cli(argv=None):
    args = build_parser().parse_args(argv)
    try:
        main(args)
    except (UsageError, FloatingPointError, WriteError) as e:  # bad input: 2; diverged (log kept), no space: 1
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    return 0


def entry(argv=None):
    """cli() as a command: Ctrl-C is one line, not a traceback (main closes the log and the lock on its way out;
    the rerun starts the unfinished run again). cli() itself lets KeyboardInterrupt through, so that the
    driver running it in-process stops as a whole."""
    try:
        return cli(argv)
    except KeyboardInterrupt:
        print("train.py: interrupted; nothing finished is lost, run the same command to start this run again",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(entry())
