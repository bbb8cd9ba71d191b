"""The driver behind ./reproduce.sh: plans of train.py runs, run resumably and in parallel, then tables and
figures made from their logs only (speedup.py), with the paper's published values beside ours.

    ./reproduce.sh                      # Table 1: CIFAR-100 70+30, 5 seeds x (old model + 23 runs)
    ./reproduce.sh --quick              # the same table, scaled down (2 seeds, 4,000 iterations)
    ./reproduce.sh --list --wave 0      # shell commands of the old models (then --wave 1, ...) for a cluster
    ./reproduce.sh --plan table2b       # also: table2a, fig6, fig7, appendix, analysis (plans.py, report*.py)

A finished run (its log.jsonl has a summary line) is kept; an unfinished one starts again from scratch; a finished
run whose configuration differs from the plan stops the driver instead of being mixed in. A finished run trains again
only if what it started from changed (set_aside) or a run the driver trains starts from its ckpt.pt, gone.
"""
import argparse
import contextlib
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time

import torch

import checks
import ckpt
import data
import runlog
from resnet import STEMS, stem_for
import train

from . import plans as P
from . import report as R
from . import report_analysis
from .runs import check_log

HERE = os.path.dirname(os.path.abspath(train.__file__))  # the repository root, where train.py is
REPORTS = {**R.REPORTS, "analysis": report_analysis.report_analysis}


# --------------------------------------------------------------------------------------------- running

def die(msg):
    """Bad input or state: one line on stderr, exit code 2 (as train.py)."""
    print(f"reproduce.sh: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def train_argv(run, args, runs_dir):
    """The full train.py command line of a run (without --device)."""
    return ["--dataset", args.dataset, "--data-dir", args.data_dir, "--no-download", "--image-size",
            str(args.image_size), *(["--per-class", str(args.per_class)] if args.per_class else []),
            "--stem", args.stem, "--split", run.split, "--split-seed", str(run.seed), "--seed", str(run.seed),
            "--iters", str(args.iters), "--eval-every", str(args.eval_every), "--batch-size", str(args.batch_size),
            "--width", str(args.width), "--amp", args.amp, "--label", run.label,
            "--out", os.path.join(runs_dir, run.name), *run.flags] + \
        {True: ["--cuda-graph"], False: ["--no-cuda-graph"], None: []}[args.cuda_graph]


def planned(run, args, runs_dir):
    """A run's train.py arguments, as train.py parses the command line the driver gives it (train_argv)."""
    return train.parse_or_raise(train_argv(run, args, runs_dir))


def check_runs(runs, args, runs_dir, num_classes):
    """train.py's own checks (checks.check_config) over every planned run, once, before the first: bad input
    is one line here, not N failed runs. num_classes may be None (not known before the data is there). Returns
    {name: planned}."""
    plans = {}
    for r in runs:
        try:
            plans[r.name] = planned(r, args, runs_dir)
            checks.check_config(plans[r.name], num_classes)
        except checks.UsageError as e:
            die(f"{r.name}: {e}")
    return plans


def check_splits(runs, num_classes):
    for split in sorted({r.split for r in runs}):  # a bad split is one error here, not N failed runs
        try:
            data.num_tasks(split, num_classes)
        except ValueError as e:
            die(str(e))


def check_data(run, header, runs_dir, ident):
    """A finished run may only be reused for the same data (data.identity: class names, counts, a hash of
    every image and label)."""
    where = os.path.join(runs_dir, run.name)
    what = data.identity_diff(header.get("data"), ident)  # a log without it is not comparable: other data
    if what:
        die(f"{where} holds a finished run on other data ({what} not the same as {run.name}'s dataset); use "
            "another --runs folder or remove it")


def check_matches(run, run_args, runs_dir, ident):
    """A finished run must be the planned one (run_args: planned's): same method configuration, seed, label and
    data."""
    planned = vars(run_args)
    header = read_checked(os.path.join(runs_dir, run.name))
    check_data(run, header, runs_dir, ident)
    want = {k: v for k, v in planned.items() if k not in train.NOT_METHOD}
    got = header["group"]  # completed by runlog.SAME_AS_BEFORE
    diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if planned.get("grad_norms") and not header["config"].get("grad_norms"):  # not a method flag: not in diff
        die(f"{os.path.join(runs_dir, run.name)} holds a finished run without the --grad-norms probe the plan "
            "needs; use another --runs folder or remove it")
    if diff or header["config"]["seed"] != run.seed or header["label"] != run.label:
        what = ", ".join(f"{k}: {got.get(k)} vs planned {want.get(k)}" for k in diff[:3]) or "seed or label"
        die(f"{os.path.join(runs_dir, run.name)} holds a finished run of another "
            f"configuration ({what}); use another --runs folder or remove it")


def read_checked(run_dir):
    """A finished run's header, after checking every field the driver and the tables read (a hand-edited log:
    one line naming the file and the field)."""
    try:
        header, evals, _ = runlog.read_log(run_dir)
        path = runlog.log_path(run_dir)
        check_log(path, header, evals)
        if not isinstance(header.get("config"), dict) or not isinstance(header["config"].get("seed"), int):
            raise ValueError(f"{path}: the header has no config with a seed (not a train.py log?)")
    except ValueError as e:
        die(str(e))
    return header


def depth(run, by_name):
    return 0 if not run.deps else 1 + max(depth(by_name[d], by_name) for d in run.deps)


def finished_runs(runs, runs_dir):
    return {r.name for r in runs if runlog.is_finished(os.path.join(runs_dir, r.name))}


def stale_runs(runs, plans, runs_dir, finished, hashes):
    """{name: why} of the finished runs that no longer start from what is there now (lineage_change)."""
    return {r.name: why for r in runs if r.name in finished
            and (why := lineage_change(r, plans[r.name], runs_dir, hashes, retrained=())) is not None}


def may_train(order, plans, finished, stale, runs_dir):
    """(may, again): the names of the runs a driver may train, before any of them trains, and of those the
    finished runs trained again because a run in `may` starts from their ckpt.pt and it is gone (a run carried
    as its log alone). It trains the unfinished runs and the stale ones ({name: why}); a finished run that
    depends on a run it trains may train too (kept only if that one trains again to the same result: on a GPU,
    seldom), so the ckpt.pt it starts from must be there: a pending run cannot wait to see whether it trains.
    `may` is an upper bound, for the space check. order: the runs, each after the runs it depends on; plans:
    {name: planned}."""
    may, again = {r.name for r in order if r.name not in finished} | set(stale), set()
    own = {name: os.path.join(runs_dir, name, "ckpt.pt") for name in finished}
    lost = {name for name in finished if not os.path.isfile(own[name])}  # carried as its log alone
    while True:
        for r in order:
            if set(r.deps) & may:
                may.add(r.name)
        needed = {plans[name].old_ckpt for name in may}
        gone = {name for name in lost - again if own[name] in needed}
        if not gone:  # down a chain (Fig. 6), a run trained again needs the ckpt.pt of the link before
            return may, again
        may, again = may | gone, again | gone


def set_aside(runs_dir, name, why, then="training it again"):
    """A finished run that no longer starts from what is there now is unfinished from here on: its log.jsonl
    becomes log.jsonl.stale (kept to be read until the run trains again), so a training again that fails or is
    stopped leaves no run of the old lineage for a table to take, or for the next driver to keep (a log from before
    the lineage was recorded could not tell); the runs that depend on it read the mark (runlog.was_set_aside)."""
    log, stale = os.path.join(runs_dir, name, "log.jsonl"), os.path.join(runs_dir, name, runlog.STALE)
    try:
        os.replace(log, stale)
    except OSError as e:
        die(f"cannot set aside {log}: {e.strerror}")
    print(f"{name}: finished, but {why}; {then} (its log is now {stale})", flush=True)


def execute(runs, args, runs_dir, plans):
    """Runs what is not finished, dependencies first, on len(slots) parallel workers, under the driver's lock
    (plans: {name: planned}): the finished runs are read here, the free space checked for the runs it may train.
    Returns failed names."""
    by_name = {r.name: r for r in runs}
    order = sorted(runs, key=lambda r: depth(r, by_name))  # a run's dependencies first
    argvs = {r.name: train_argv(r, args, runs_dir) for r in runs}
    finished, hashes = finished_runs(runs, runs_dir), {}
    for r in runs:
        if r.name in finished:
            check_matches(r, plans[r.name], runs_dir, args.data_identity)
    stale = stale_runs(runs, plans, runs_dir, finished, hashes)
    may, again = may_train(order, plans, finished, stale, runs_dir)
    try:
        checks.check_space(runs_dir, sum(run_bytes(plans[name]) for name in may),
                           f"the {len(may)} run{'s' * (len(may) != 1)} it may train write{'s' * (len(may) == 1)}")
    except checks.UsageError as e:
        die(str(e))
    todo, total = {r.name for r in runs}, len(runs)
    pending, done, failed, ran = set(finished), set(), set(), set()

    def settle():
        """One pass over the runs left, dependencies first (a run decided here frees or skips the runs after it). A
        run one it needs failed is skipped. A finished run (pending) waits until every run it depends on is final
        (done or failed): set aside if it no longer starts from what is there (lineage_change; before any run
        trains, as stale_runs found it), else trained again (--overwrite) if a run the driver trains starts from
        its gone ckpt.pt, else kept (a skipped one keeps its log too; one kept before any trains is counted as
        finished, without a line)."""
        for r in order:
            if r.name not in todo:
                continue
            skip = any(d in failed for d in r.deps)
            if r.name in pending:
                if not all(d in done or d in failed for d in r.deps):
                    continue  # a run it depends on trains (again) first: not skipped yet, judged once that is final
                pending.discard(r.name)
                why = (lineage_change(r, plans[r.name], runs_dir, hashes, {os.path.join(runs_dir, d) for d in ran})
                       if ran else stale.get(r.name))
                if why is not None:
                    set_aside(runs_dir, r.name, why, then="left to train next time" if skip else "training it again")
                elif skip:
                    pass  # kept as it is, and skipped below
                elif r.name in again:
                    print(f"{r.name}: finished, but the ckpt.pt that later runs start from is gone; training it "
                          "again", flush=True)
                    argvs[r.name] += ["--overwrite"]
                else:
                    todo.discard(r.name)
                    done.add(r.name)
                    if ran:
                        print(f"[{len(done) + len(failed)}/{total}] {r.name:42s} kept: the runs it depends on did not "
                              "change (trained again to the same result, or kept)", flush=True)
            if skip:
                todo.discard(r.name)
                failed.add(r.name)
                print(f"[-/{total}] {r.name:42s} skipped: a run it needs failed", flush=True)

    settle()
    print(f"{args.plan}: {total} runs, {len(done)} already finished, {len(todo)} to run on "
          f"{len(args.slots)} worker(s) ({args.device})", flush=True)
    started = time.time()
    walls = []

    def report(r, ok, wall):
        hashes.pop(os.path.join(runs_dir, r.name, "ckpt.pt"), None)  # trained again: hashed anew when read
        ran.add(r.name)
        k = len(done) + len(failed)
        if ok:
            s = runlog.read_log(os.path.join(runs_dir, r.name))[2]
            walls.append(wall)
            left = total - k
            eta = left * (sum(walls) / len(walls)) / len(args.slots)
            print(f"[{k}/{total}] {r.name:42s} max acc {s['max_acc']:6.2f} | {wall / 60:6.1f} min | "
                  f"ETA {eta / 3600:5.2f} h", flush=True)
        else:
            print(f"[{k}/{total}] {r.name:42s} FAILED (see {os.path.join(runs_dir, r.name, 'train.out')})", flush=True)

    procs = {}  # name -> (slot, Popen, start time)
    try:
        while todo or procs:
            settle()
            busy = {slot for slot, _, _ in procs.values()}
            free = [s for s in args.slots if s not in busy]
            # none is pending: settle has just decided every pending run whose runs are done
            ready = [r for r in runs if r.name in todo and all(d in done for d in r.deps)]
            if not procs and todo and not ready:
                raise RuntimeError(f"plan has unsatisfiable dependencies: {sorted(todo)}")
            for slot, r in zip(free, ready):
                todo.discard(r.name)
                run_dir = os.path.join(runs_dir, r.name)
                os.makedirs(run_dir, exist_ok=True)
                if len(args.slots) == 1:  # one worker: run in this process (no interpreter start per run)
                    t0 = time.time()
                    ok = run_inprocess(argvs[r.name] + ["--device", slot_device(slot, args), "--quiet"],
                                       os.path.join(run_dir, "train.out"))
                    (done if ok else failed).add(r.name)
                    report(r, ok, time.time() - t0)
                else:
                    procs[r.name] = (slot, launch(argvs[r.name], slot, args, run_dir), time.time())
            for name, (slot, proc, t0) in list(procs.items()):
                if proc.poll() is not None:
                    del procs[name]
                    (done if proc.returncode == 0 else failed).add(name)
                    report(by_name[name], proc.returncode == 0, time.time() - t0)
            if procs:
                time.sleep(0.2)
    except BaseException:  # Ctrl-C, or a one-line error (set_aside's) while workers train: none is left running
        stop_workers([proc for _, proc, _ in procs.values()])
        raise
    print(f"{args.plan}: finished in {(time.time() - started) / 60:.1f} min, {len(failed)} failed", flush=True)
    return failed


def run_bytes(run_args):
    """An estimate of what one run (its planned train.py arguments) writes, before any model is built: its
    ckpt.pt's fp32 copies of the weights (ckpt.weight_copies) and a log (ckpt.bytes_to_write, which each run
    checks for itself, also counts the per-example arrays)."""
    return ckpt.weight_copies(run_args) * 4 * checks.num_weights(run_args.width) + 2 ** 20


def lineage_change(run, run_args, runs_dir, hashes, retrained):
    """None if a finished run started from what is there now, else why not, in words: its old model, by the weights
    hash its log recorded (ckpt.weights_hash) against the checkpoint's, and with --stop-at-acc-of (Fig. 6's l100
    chain) the accuracy it stopped at against that run's maximum now. A log from before either was recorded passes
    unless that run was trained again by this driver (retrained: their folders); so does a run whose old checkpoint is
    gone, or whose --stop-at-acc-of run is unfinished (nothing to differ from). run_args: planned's; hashes: a cache
    {path: hash}."""
    old, stop = run_args.old_ckpt, run_args.stop_at_acc_of
    if not old and not stop:  # an old model or a scratch run: nothing it starts from
        return None
    try:  # a summary edited by hand: one line, whatever else changed, not a link set aside that train.py then refuses
        now = checks.stop_accuracy(run_args) if stop and runlog.is_finished(stop) else None
    except checks.UsageError as e:
        die(f"{run.name}: {e}")
    # an old model set aside and not trained since (stopped, or failed): nothing to compare (a stop target, a scratch
    # run, starts from nothing, so it is never set aside)
    if old and runlog.was_set_aside(os.path.dirname(old)):
        return f"{os.path.dirname(old)} was set aside to be trained again"
    header = runlog.read_log(os.path.join(runs_dir, run.name))[0]
    if old and os.path.isfile(old):
        recorded = header.get("old_weights_sha256")
        if recorded is None and os.path.dirname(old) in retrained:
            return "its log does not record which old model it continued from, and that was trained again"
        if recorded is not None and recorded != hash_of(old, hashes):
            return f"it was continued from another {old} than the one there now"
    if stop:
        recorded = header.get("stop_at_acc")
        if recorded is None and stop in retrained:
            return f"its log does not record the accuracy it stopped at, and {stop} was trained again"
        if recorded is not None and now is not None and recorded != now:
            return f"it stopped at {recorded}, {stop}'s maximum then, not at its maximum now ({now})"
    return None


def hash_of(path, hashes):
    """ckpt.weights_hash of the checkpoint at path, None if unreadable (not the model a run started from), cached
    in hashes {path: hash}."""
    if path not in hashes:
        try:
            hashes[path] = ckpt.weights_hash(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 - unreadable
            hashes[path] = None
    return hashes[path]


def check_lineages(runs, plans, runs_dir):
    """--report-only: a finished run continued from another old model than the one now at its --old-ckpt, or
    stopped at another accuracy than its --stop-at-acc-of run's now (either was trained again since), is refused,
    not mixed into a table; the driver would train it again."""
    for name, why in stale_runs(runs, plans, runs_dir, finished_runs(runs, runs_dir), {}).items():
        die(f"{os.path.join(runs_dir, name)}: {why}; run without --report-only to train it again")


def remove_empty(folder, existed):
    """Remove `folder` and the folders above it up to `existed` while they are empty: a driver refused under its
    lock (a full disk) leaves no trace of the runs folder it made for the lock."""
    folder = os.path.abspath(folder)
    while folder != existed:
        try:
            os.rmdir(folder)
        except OSError:  # not empty: runs were written
            return
        folder = os.path.dirname(folder)


def slot_device(slot, args):
    return "cpu" if args.device == "cpu" else f"cuda:{slot[0]}"


def run_inprocess(argv, out_path):
    with open(out_path, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return train.cli(argv) == 0
        except Exception:  # noqa: BLE001 - a crashed run (out of memory, ...) fails alone, like a subprocess
            import traceback

            traceback.print_exc()
            return False


def launch(argv, slot, args, run_dir):
    """A train.py worker that dies with this driver, whatever kills it: a surviving worker would go on
    writing into a run folder that the next driver starts again (see stop_workers, die_with_parent)."""
    env = dict(os.environ)
    device = "cpu"
    if args.device != "cpu":  # each worker sees only its GPU
        env["CUDA_VISIBLE_DEVICES"] = str(slot[0])
        device = "cuda"
    else:  # concurrent CPU runs share the cores: more threads than cores makes OpenMP spin (100x slower)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(args.slots))))
    with open(os.path.join(run_dir, "train.out"), "w") as out:
        return subprocess.Popen([sys.executable, os.path.join(HERE, "train.py"), *argv, "--device", device],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=die_with_parent())


def die_with_parent():
    """A preexec_fn for Linux: prctl(PR_SET_PDEATHSIG, SIGKILL) makes the kernel kill the worker when the
    driver exits, also on SIGKILL, which no handler of ours sees. Elsewhere None (Ctrl-C, SIGTERM and SIGHUP
    still stop the workers, see stop_workers)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec():
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the driver died before prctl took effect
            os._exit(1)

    return preexec


def stop_workers(procs, grace=5.0):
    """SIGTERM each worker's process group (it runs in its own session, so a terminal's Ctrl-C reaches only
    the driver, and the worker's own children go too), then SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = [p for p in procs if p.poll() is None]  # an exited worker's group id may be reused
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        deadline = time.time() + grace
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGHUP stop the driver as Ctrl-C does: workers stopped, finished runs kept."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------------------------- main

class HelpFormatter(argparse.RawDescriptionHelpFormatter, train.HelpFormatter):
    """train.py's defaults in the help, and this module's docstring as written."""


def build_parser():
    p = runlog.OneLineParser(prog="reproduce.sh", description=__doc__, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--plan", default="table1", choices=list(P.PLANS),
      help="table1 (Table 1), table2a (Table 2a), table2b (Table 2b), fig6 (Fig. 6), fig7 (Fig. 7), "
           "appendix (App. A.3-A.6), analysis (Figs. 11, 14, 15), laptop (Table 2a's CIFAR-10 rows sized for a "
           "CPU: 3 seeds, 100 images per class, 16 px, width 16, 3,910 iterations)")
    a("--seeds", type=int, help="number of seeds (0..seeds-1); each seed has its own class order (default: 5; "
                                "laptop: 3)")
    a("--iters", type=int, help="iterations per run; the schedule scales with it (default: 39,100; laptop: 3,910)")
    a("--eval-every", type=int, help="evaluation interval (default: iters/195.5 rounded, at least 1: 200 for "
                                     "39,100, every iteration up to 293; laptop: iters/50.1, 78 for 3,910)")
    a("--quick", action="store_true", help="a scaled-down plan: at most 2 seeds, 4,000 iterations (laptop: 400) "
                                           "unless --iters")
    a("--dataset", help="cifar100, cifar10 or folder (default: the plan's, e.g. cifar10 for table2a)")
    a("--data-dir", default="data", help="dataset folder (CIFAR is downloaded here)")
    a("--split", help="class split, or domain split such as product_images+real_life (default: the plan's; "
                      "table2b takes a comma-separated list)")
    a("--image-size", type=int, help="images are resized to this (default: 112 for folder datasets with "
                                     "--compare-to adaptiope / imagenet100 / imagenet200 and for fig7, 16 for "
                                     "laptop, else 32)")
    a("--per-class", type=int,
      help="train on this many images of each class (a fixed seeded subset, the same for every run; 0: all; "
           "default: 0, laptop: 100)")
    a("--stem", default="auto", choices=["auto", *STEMS],
      help="ResNet-18 stem; auto: cifar up to 32x32 images, imagenet (7x7 stride 2 + max-pool) above")
    a("--compare-to", choices=sorted(P.TABLE2A), help="table2a: the paper's row to print beside ours")
    a("--chain-scale", type=float, default=1.0, help="fig6: schedule scale of every task of the chain")
    a("--chain-stop", default=P.CHAIN_STOP_DEFAULT, choices=["schedule", "l100"],
      help="fig6: each task of the chain runs its schedule to the end (schedule, the paper's Sec. 4.2), or ends "
           "where it reaches its scratch model's accuracy (l100); the next task continues from there")
    a("--amp", default="auto", choices=["auto", "bf16", "fp32"],
      help="precision of every run: auto = bf16 autocast on a GPU, fp32 with --device cpu")
    a("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
      help="every run records its training step as one CUDA graph (default: train.py's, on a GPU)")
    a("--target", default="max", choices=["max", "final"],
      help="a_scratch of Eq. 2: the reference's maximum accuracy or its final accuracy")
    a("--width", type=int, help="ResNet-18 width (default: 64, the paper's; laptop: 16)")
    a("--batch-size", type=int, default=128, help="batch size (128 = the paper's)")
    a("--device", default="auto", choices=["auto", "cuda", "cpu"],
      help="auto: the GPU; without one, laptop runs on the CPU and the other plans refuse")
    a("--gpus", default="0", help="comma-separated GPU ids to spread runs over")
    a("--jobs-per-gpu", type=int,
      help="concurrent runs per GPU (default 1: on an H200, 2-8 graphed runs side by side trained 5%% fewer "
           "iterations per second in total than one, docs/speed.md); with --device cpu: concurrent runs sharing "
           "the cores (default 1; "
           "laptop: one per core, each of one thread, faster in total than one run over all cores)")
    a("--runs", help="runs folder (default: runs/<dataset>-<iters>it-w<width>[-b<batch>]; an image folder's "
                     "<dataset> is folder-<name>-<hash of its path>)")
    a("--results", help="tables and figures (default: results/ for the paper's setting, else "
                        "results/<runs folder name>-<n>seeds/)")
    a("--list", action="store_true", help="print the plan's train.py commands, one per line, and exit")
    a("--wave", type=int, help="with --list: only runs at this dependency depth (0 = old models)")
    a("--report-only", action="store_true", help="only make tables and figures from finished runs")
    return p


def resolve(args):
    dataset, split = P.PLAN_DEFAULTS[args.plan]
    args.dataset, args.split = args.dataset or dataset, args.split or split
    if not all(s.strip() for s in args.split.split(",")):
        die(f"--split '{args.split}' has an empty entry")
    scale = P.SCALES.get(args.plan, P.PAPER_SCALE)
    if args.quick:
        args.seeds, args.iters = min(args.seeds or scale["seeds"], 2), args.iters or scale["quick_iters"]
    for key in ("seeds", "iters", "width", "per_class", "image_size"):
        if getattr(args, key) is None:
            setattr(args, key, scale[key])
    if args.eval_every is None:  # the plan's number of evaluations per run, whatever its length
        args.eval_every = max(1, round(args.iters * scale["eval_every"] / scale["iters"]))
    args.image_size = P.image_size(args) if args.image_size is None else args.image_size
    if args.device == "auto" and args.plan == "laptop" and not torch.cuda.is_available():
        args.device = "cpu"  # the CPU-sized plan: a CPU is the hardware it is for
    if args.jobs_per_gpu is None:
        laptop_on_cpu = args.plan == "laptop" and args.device == "cpu" and not args.report_only
        args.jobs_per_gpu = (os.cpu_count() or 1) if laptop_on_cpu else 1
    if min(args.seeds, args.iters, args.width, args.batch_size, args.jobs_per_gpu, args.image_size) < 1:
        die("--seeds, --iters, --width, --batch-size, --jobs-per-gpu and --image-size must be >= 1")
    if args.amp == "auto":  # explicit in every command, so a finished run's log can be checked against the plan
        args.amp = "fp32" if args.device == "cpu" else "bf16"
    args.stem = stem_for(args.image_size) if args.stem == "auto" else args.stem  # explicit too, as --amp
    try:
        domain_splits = [s for s in args.split.split(",") if data.parse_domains(s)]
    except ValueError as e:
        die(str(e))
    if domain_splits and "," in args.split:
        die(f"--split '{args.split}': a domain split reads other data than the other splits; give one split")
    tag = run_tag(args)
    runs_dir = args.runs or os.path.join("runs", tag)
    results_dir = args.results or (P.RESULTS.get(args.plan, "results") if paper_setting(args, tag) else
                                   os.path.join("results", f"{tag}-{args.seeds}seeds"))
    return runs_dir, results_dir


def run_tag(args):
    """The runs folder's name: everything about the data and the network that changes a number."""
    name = args.dataset if args.dataset != "folder" else folder_name(args.data_dir)
    return f"{name}-{args.iters}it-w{args.width}" + (f"-b{args.batch_size}" if args.batch_size != 128 else "") + \
        (f"-{args.image_size}px" if args.image_size != 32 else "") + \
        (f"-{args.stem}" if args.stem != stem_for(args.image_size) else "") + \
        (f"-pc{args.per_class}" if args.per_class else "")


def paper_setting(args, tag):
    """Whether results go to results/ as the paper's setting of the plan (README "Choices"). Decided from the
    same run_tag that names the runs folder, computed once more with the paper's values (Sec. 2.1, App. A.2:
    39,100 iterations, width 64, batch 128, the plan's dataset at its IMAGE_SIZE and stem), so whatever enters
    the tag (dataset, data folder, length, width, batch, image size, stem) sends a trial elsewhere; then what
    is not in the tag: split, seeds, evaluation interval (Eq. 1's resolution), --target and the Fig. 6 chain.
    The precision is not part of it: the paper states none, and every log records it. The laptop plan's setting
    is its own size (plans.SCALES) and writes into results/laptop/."""
    dataset, split = P.PLAN_DEFAULTS[args.plan]
    scale = P.SCALES.get(args.plan, P.PAPER_SCALE)
    paper = argparse.Namespace(**{**vars(args), "dataset": dataset, "iters": scale["iters"], "width": scale["width"],
                                  "batch_size": 128, "compare_to": None, "per_class": scale["per_class"]})
    paper.image_size = scale["image_size"] or P.image_size(paper)
    paper.stem = stem_for(paper.image_size)
    # an image folder is the paper's data only under the paper's dataset's name (e.g. data/Adaptiope for fig7)
    folder_ok = dataset != "folder" or \
        os.path.basename(os.path.abspath(args.data_dir)).lower() == P.PLAN_DATA.get(args.plan, "")
    return folder_ok and tag == run_tag(paper) and \
        (args.split, args.seeds, args.eval_every, args.target, args.chain_scale, args.chain_stop) == \
        (split, scale["seeds"], scale["eval_every"], "max", 1.0, P.CHAIN_STOP_DEFAULT)


def folder_name(data_dir):
    """folder-<name>-<hash of the absolute path>: two image folders of one name never share a runs folder.
    CIFAR keeps its plain name: cifar.py checks its files' md5, so it is the same data wherever it lies;
    and a finished run is only reused for identical data anyway (check_data)."""
    path = os.path.abspath(data_dir)
    return f"folder-{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def print_lines(lines):
    """Print, and end quietly when the reader leaves early (`--list | head -1`)."""
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit fails no more


def check_writable(*folders):
    for flag, path in folders:
        try:
            checks.check_out_writable(path, flag)
        except checks.UsageError as e:
            die(str(e))


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    runs_dir, results_dir = resolve(args)
    try:
        runs = P.PLANS[args.plan](args, runs_dir)
    except ValueError as e:
        die(str(e))
    by_name = {r.name: r for r in runs}
    assert len(by_name) == len(runs), "a plan lists a run twice"
    num_classes = data.num_classes_of(args.dataset, args.data_dir, args.split.split(",")[0])
    if num_classes is not None:
        check_splits(runs, num_classes)
    plans = check_runs(runs, args, runs_dir, num_classes)
    if args.list:
        print_lines(shlex.join(["python", os.path.relpath(os.path.join(HERE, "train.py")),
                                *train_argv(r, args, runs_dir)])
                    for r in sorted(runs, key=lambda r: (depth(r, by_name), not r.label.startswith("old")))
                    if args.wave is None or depth(r, by_name) == args.wave)
        return 0
    if args.device == "auto" and args.report_only:
        args.device = "cpu"  # tables and figures need no GPU
    if args.device == "auto":
        if not torch.cuda.is_available():
            iters = [train.run_length(plans[r.name]) for r in runs]
            die(f"no GPU found. This plan is {len(runs)} runs of up to {max(iters)} iterations: about "
                f"{cpu_time(iters, args)} on a CPU. --plan laptop is the CPU-sized run (Table 2a's CIFAR-10 rows); "
                "--device cpu runs this plan on the CPU anyway"
                + (" (try --quick --width 8)." if args.width > 8 or args.iters > 4000 else "."))
        args.device = "cuda"
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    args.slots = [(g, j) for g in (gpus if args.device == "cuda" else ["cpu"]) for j in range(args.jobs_per_gpu)]
    if not args.slots:
        die(f"--gpus '{args.gpus}' lists no GPU")
    check_devices(args)
    try:  # a model or batch that cannot fit: refused here, not in every run
        checks.check_memory(args.width, args.image_size, args.batch_size, args.stem,
                            torch.device(slot_device(args.slots[0], args)))
    except checks.UsageError as e:
        die(str(e))
    check_writable(("--results", results_dir), *([] if args.report_only else [("--runs", runs_dir)]))
    if not args.report_only:
        num_classes, args.data_identity = prepare_data(args, runs)
        check_splits(runs, num_classes)
        plans = check_runs(runs, args, runs_dir, num_classes)
        existed = checks.nearest_existing(runs_dir)
        try:  # one driver per runs folder (a second would find every unfinished run in use)
            lock = runlog.lock_run(runs_dir, what="another reproduce.sh")
        except checks.UsageError as e:
            remove_empty(runs_dir, existed)
            die(str(e))
        try:
            with stop_on_signals():
                failed = execute(runs, args, runs_dir, plans)
        except KeyboardInterrupt:  # finished runs are safe; unfinished ones start again next time
            msg = "reproduce.sh: interrupted; finished runs are kept, run the same command to resume"
            raise SystemExit(msg) from None
        finally:
            runlog.unlock_run(lock)
            remove_empty(runs_dir, existed)
    else:
        check_lineages(runs, plans, runs_dir)
        failed = set()
    args.finished_runs = len(R.finished(runs, runs_dir))
    if not args.finished_runs:  # a table of "(not run)" cells would replace one of numbers
        msg = f"no finished run of plan {args.plan} in {runs_dir}: no table written"
        if args.report_only:
            die(msg)
        print(f"reproduce.sh: {msg}", file=sys.stderr)
        return 1
    try:
        REPORTS[args.plan](runs, args, runs_dir, results_dir)
    except ValueError as e:  # a log the tables cannot read (check_log says which and why)
        die(str(e))
    print(f"results in {results_dir}/", flush=True)
    return 1 if failed else 0


# training FLOPs per image of ResNet-18 at width 64 on 32x32 images with the CIFAR stem (forward 0.56 GMACs = 1.1
# GFLOPs, backward twice that: bench.flops_per_image counts 3.33e9), and what a CPU sustains on it (the laptop plan:
# 4e14 FLOPs in 77 min on 2 cores, 0.9e11 FLOP/s): a rough guide for cpu_time, not a measurement
TRAIN_FLOPS, CPU_FLOPS = 3.3e9, 1e11


def cpu_time(iters, args):
    """Roughly how long runs of these iterations take on a CPU, in words ('3 minutes', '3 days'): iterations x
    batch x TRAIN_FLOPS, scaled by width^2 and the number of pixels the stem leaves, over CPU_FLOPS (runs that
    stop at the reference's accuracy are counted in full: an upper bound for them)."""
    pixels = (args.image_size / (1 if args.stem == "cifar" else 4) / 32) ** 2
    seconds = sum(iters) * args.batch_size * TRAIN_FLOPS * (args.width / 64) ** 2 * pixels / CPU_FLOPS
    for unit, size in (("weeks", 604800), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return "1 second" if seconds < 1.5 else f"{seconds:.0f} seconds"


def check_devices(args):
    for slot in sorted(set(slot_device(s, args) for s in args.slots)):
        try:
            checks.resolve_device(slot)
        except checks.UsageError as e:
            die(str(e))


def prepare_data(args, runs=()):
    """Download / decode the dataset once, before parallel runs read it (they run with --no-download).
    Returns the number of classes and the dataset's identity (data.identity). A --batch-size larger than a
    run's training data is refused here, before the first run."""
    try:  # a domain split (one per plan, see resolve) loads its domains; class splits share one dataset
        split = args.split.split(",")[0]
        domains = data.parse_domains(split)
        train, test, classes = data.load_for_split(args.dataset, args.data_dir, split, args.image_size,
                                                   per_class=args.per_class)
        found = len(classes), data.identity(train, test, classes, domains, args.per_class)
    except Exception as e:  # noqa: BLE001 - any failure to get the data is reported the same way
        die(f"cannot load {args.dataset} from {args.data_dir}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
    for r in sorted(runs, key=lambda r: r.task):  # train.py's check_task, before the first run
        try:
            checks.check_task(args.batch_size, r.task, task_labels(train, test, len(classes), r))
        except checks.UsageError as e:
            die(f"{r.name}: {e}")
    return found


def task_labels(train, test, num_classes, run):
    """The task data of `run` as train.py selects it (data.select_task, its --split-seed the run's seed), without
    the images."""
    strip = lambda part: (torch.empty(len(part[1]), 0), *part[1:])  # noqa: E731 - labels (and domains) only
    return data.select_task(strip(train), strip(test), num_classes, run.split, run.seed, run.task)[2]


if __name__ == "__main__":
    sys.exit(main())
