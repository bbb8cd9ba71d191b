"""The driver behind ./reproduce.sh: plans of train.py runs, run resumably and in parallel, then tables and
figures made from their logs only (speedup.py), with the paper's published values beside ours.

    ./reproduce.sh                      # Table 1: CIFAR-100 70+30, 5 seeds x (old model + 20 runs)
    ./reproduce.sh --quick              # the same table, scaled down (2 seeds, 4,000 iterations)
    ./reproduce.sh --list --wave 0      # shell commands of the old models (then --wave 1, ...) for a cluster

A finished run (its log.jsonl has a summary line) is never run again; an unfinished one starts again from
scratch; a finished run whose configuration differs from the plan stops the driver instead of being mixed in.
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

import speedup as S

HERE = os.path.dirname(os.path.abspath(__file__))
PAPER_ITERS = 39100


@dataclass
class Run:
    name: str  # path below the runs folder, e.g. seed0/continuous+init
    label: str  # row label: runs of different seeds with one label are averaged
    flags: list  # train.py flags beyond the common ones
    seed: int
    deps: list = field(default_factory=list)  # names of runs whose ckpt.pt this one reads


# ------------------------------------------------------------------------------------------------- plans
# Table 1: (Initialization, Regularization, Data, Scheduler) check marks, and the paper's values
# (Continuous Max Acc, L99, L100, Scratch Max Acc, L99, L100); None is the paper's '/'.
TABLE1 = [
    ((0, 0, 0, 1.0), (65.26, None, None, 65.92, 1.33, 1.00)),
    ((1, 0, 0, 1.0), (66.43, 1.49, 1.20, 65.06, None, None)),
    ((0, 1, 0, 1.0), (68.60, 1.94, 1.66, 67.90, 1.69, 1.51)),
    ((0, 0, 1, 1.0), (66.65, 1.60, 1.31, 66.61, 1.54, 1.31)),
    ((0, 0, 0, 0.25), (64.15, None, None, 63.72, None, None)),
    ((1, 1, 0, 1.0), (68.91, 2.19, 1.82, 68.01, 1.75, 1.54)),
    ((1, 0, 1, 1.0), (66.76, 2.92, 2.53, 66.61, 1.54, 1.31)),
    ((0, 1, 1, 1.0), (68.86, 1.96, 1.69, 68.30, 1.67, 1.49)),
    ((1, 1, 1, 1.0), (69.47, 2.19, 1.84, 68.31, 1.69, 1.52)),
    ((1, 1, 1, 0.25), (68.26, 5.73, 5.32, 63.74, None, None)),
]


def method_flags(column, init, reg, data, scale, old):
    """train.py flags of one Table 1 cell. column: 'continuous' (from the old model) or 'scratch'."""
    flags = []
    if column == "continuous":
        flags += ["--init", "shrink_perturb" if init else "old", "--old-ckpt", old]
    else:
        flags += ["--init", "scratch"] + (["--sp"] if init else [])
    if reg:
        flags += ["--reg", "l2init"]
    if data:
        flags += ["--sampler", "easy_hard"] + (["--old-ckpt", old] if column == "scratch" else [])
    if scale != 1:
        flags += ["--schedule-scale", f"{scale:g}"]
    return flags


def row_label(column, init, reg, data, scale):
    parts = [column] + ["init"] * init + ["reg"] * reg + ["data"] * data + ([f"x{scale:g}"] if scale != 1 else [])
    return "+".join(parts)


def old_run(seed, task=0, deps=()):
    return Run(f"seed{seed}/old" if task == 0 else f"seed{seed}/old-task{task}", f"old-task{task}",
               ["--task", str(task)], seed, list(deps))


def plan_table1(seeds, runs_dir):
    runs = []
    for s in seeds:
        old = old_run(s)
        runs.append(old)
        ckpt = os.path.join(runs_dir, old.name, "ckpt.pt")
        for (init, reg, data, scale), _ in TABLE1:
            for column in ("continuous", "scratch"):
                label = row_label(column, init, reg, data, scale)
                flags = ["--task", "1"] + method_flags(column, init, reg, data, scale, ckpt)
                runs.append(Run(f"seed{s}/{label}", label, flags, s, [old.name] if "--old-ckpt" in flags else []))
    return runs


PLANS = {"table1": plan_table1}


# --------------------------------------------------------------------------------------------- running

def train_argv(run, args, runs_dir):
    """The full train.py command line of a run (without --device)."""
    return ["--dataset", args.dataset, "--data-dir", args.data_dir, "--no-download", "--split", args.split,
            "--split-seed", str(run.seed), "--seed", str(run.seed), "--iters", str(args.iters),
            "--eval-every", str(args.eval_every), "--batch-size", str(args.batch_size), "--width", str(args.width),
            "--label", run.label, "--out", os.path.join(runs_dir, run.name), *run.flags] + args.train_extra


def is_finished(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        return False
    try:
        return S.read_log(path)[2] is not None
    except ValueError:
        return False


def check_matches(run, argv, runs_dir):
    """A finished run must be the planned one: same method configuration, seed and label."""
    import train

    planned = vars(train.build_parser().parse_args(argv))
    header = S.read_log(os.path.join(runs_dir, run.name))[0]
    want = {k: v for k, v in planned.items() if k not in train.NOT_METHOD}
    got = header["group"]
    diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if diff or header["config"]["seed"] != run.seed or header["label"] != run.label:
        what = ", ".join(f"{k}: {got.get(k)} vs planned {want.get(k)}" for k in diff[:3]) or "seed or label"
        raise SystemExit(f"reproduce.sh: error: {os.path.join(runs_dir, run.name)} holds a finished run of another "
                         f"configuration ({what}); use another --runs folder or remove it")


def depth(run, by_name):
    return 0 if not run.deps else 1 + max(depth(by_name[d], by_name) for d in run.deps)


def execute(runs, args, runs_dir):
    """Runs what is not finished, dependencies first, on len(slots) parallel workers. Returns failed names."""
    by_name = {r.name: r for r in runs}
    argvs = {r.name: train_argv(r, args, runs_dir) for r in runs}
    done = set()
    for r in runs:
        if is_finished(os.path.join(runs_dir, r.name)):
            check_matches(r, argvs[r.name], runs_dir)
            done.add(r.name)
    todo = [r for r in runs if r.name not in done]
    total = len(runs)
    print(f"{args.plan}: {total} runs, {len(done)} already finished, {len(todo)} to run on "
          f"{len(args.slots)} worker(s) ({args.device})", flush=True)
    failed, started = set(), time.time()
    walls = []

    def report(r, ok, wall):
        k = len(done) + len(failed)
        if ok:
            s = S.read_log(os.path.join(runs_dir, r.name))[2]
            walls.append(wall)
            left = total - k
            eta = left * (sum(walls) / len(walls)) / len(args.slots)
            print(f"[{k}/{total}] {r.name:42s} max acc {s['max_acc']:6.2f} | {wall / 60:6.1f} min | "
                  f"ETA {eta / 3600:5.2f} h", flush=True)
        else:
            print(f"[{k}/{total}] {r.name:42s} FAILED (see {os.path.join(runs_dir, r.name, 'train.out')})", flush=True)

    procs = {}  # name -> (Popen, start time)
    while todo or procs:
        for r in [r for r in todo if any(d in failed for d in r.deps)]:  # its old model failed: cannot run
            todo.remove(r)
            failed.add(r.name)
            print(f"[-/{total}] {r.name:42s} skipped: a run it needs failed", flush=True)
        busy = {slot for slot, _, _ in procs.values()}
        free = [s for s in args.slots if s not in busy]
        ready = [r for r in todo if all(d in done for d in r.deps)]
        if not procs and todo and not ready:
            raise RuntimeError(f"plan has unsatisfiable dependencies: {[r.name for r in todo]}")
        for slot, r in zip(free, ready):
            todo.remove(r)
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
    print(f"{args.plan}: finished in {(time.time() - started) / 60:.1f} min, {len(failed)} failed", flush=True)
    return failed


def slot_device(slot, args):
    return "cpu" if args.device == "cpu" else f"cuda:{slot[0]}"


def run_inprocess(argv, out_path):
    import contextlib

    import train

    with open(out_path, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        return train.cli(argv) == 0


def launch(argv, slot, args, run_dir):
    env = dict(os.environ)
    device = "cpu"
    if args.device != "cpu":  # each worker sees only its GPU
        env["CUDA_VISIBLE_DEVICES"] = str(slot[0])
        device = "cuda"
    out = open(os.path.join(run_dir, "train.out"), "w")
    return subprocess.Popen([sys.executable, os.path.join(HERE, "train.py"), *argv, "--device", device],
                            stdout=out, stderr=subprocess.STDOUT, env=env)


# --------------------------------------------------------------------------------------------- reports

def fmt_acc(m, se):
    return f"{m:.2f} ± {se:.2f}"


def paper_speedup(x):
    return S.fmt_speedup(x) if x is not None else "/"


def collect(runs, runs_dir):
    """{label: [(header, evals), ...]} of the finished runs of the plan."""
    dirs = [os.path.join(runs_dir, r.name) for r in runs if is_finished(os.path.join(runs_dir, r.name))]
    return S.group_runs(dirs)


def cell_stats(groups, label, ref_it, ref_acc):
    """Our Max Acc (mean ± s.e.), L99 and L100 of one row against the reference curve; None if no runs."""
    if label not in groups:
        return None
    it, acc = S.mean_curve(groups[label])
    m, se = S.mean_se([max(e["acc"] for e in ev) for _, ev in groups[label]])
    return {"max_acc": m, "max_acc_se": se, "n": len(groups[label]),
            "L99": S.speedup(ref_it, ref_acc, it, acc, 99), "L100": S.speedup(ref_it, ref_acc, it, acc, 100)}


def ours_vs_paper(stats, key, paper):
    if stats is None:
        return "(not run)"
    if key == "max_acc":
        return f"{fmt_acc(stats['max_acc'], stats['max_acc_se'])} ({paper:.2f})"
    return f"{S.fmt_speedup(stats[key])} ({paper_speedup(paper)})"


def report_table1(runs, args, runs_dir, results_dir):
    groups = collect(runs, runs_dir)
    if "scratch" not in groups:
        print("no finished scratch reference yet: no table", flush=True)
        return None
    ref_it, ref_acc = S.mean_curve(groups["scratch"])
    mark = lambda on: "✓" if on else ""  # noqa: E731
    head = ("| Initialization | Regularization | Data | Scheduler | Continuous Max Acc | L99 | L100 "
            "| Scratch Max Acc | L99 | L100 |")
    md = [f"# Table 1: {args.dataset} {args.split}, ResNet-18 (width {args.width}), {args.iters} iterations, "
          f"seeds {args.seeds}", "",
          "Ours: mean ± standard error over seeds (Max Acc), speed-ups on the seed-averaged curves against the "
          "unmodified scratch row; the paper's value in brackets. '/' = the target accuracy was not reached.", "",
          head, "|" + "---|" * 10]
    csv = ["init,reg,data,scheduler,column,n,max_acc,max_acc_se,L99,L100,paper_max_acc,paper_L99,paper_L100"]
    for (init, reg, data, scale), paper in TABLE1:
        cells = [mark(init), mark(reg), mark(data), f"x{scale:g}" if scale != 1 else ""]
        for c, column in enumerate(("continuous", "scratch")):
            st = cell_stats(groups, row_label(column, init, reg, data, scale), ref_it, ref_acc)
            p = paper[3 * c: 3 * c + 3]
            cells += [ours_vs_paper(st, "max_acc", p[0]), ours_vs_paper(st, "L99", p[1]),
                      ours_vs_paper(st, "L100", p[2])]
            v = lambda x: "" if x is None else f"{x:.6g}"  # noqa: E731
            csv.append(",".join([str(init), str(reg), str(data), f"{scale:g}", column] +
                                ([str(st["n"]), v(st["max_acc"]), v(st["max_acc_se"]), v(st["L99"]), v(st["L100"])]
                                 if st else [""] * 5) + [v(x) for x in p]))
        md.append("| " + " | ".join(cells) + " |")
    os.makedirs(results_dir, exist_ok=True)
    S.write_atomic(os.path.join(results_dir, "table1.md"), "\n".join(md) + "\n")
    S.write_atomic(os.path.join(results_dir, "table1.csv"), "\n".join(csv) + "\n")
    figures = [
        ("fig1_scratch_naive_ours.png", "Fig. 1: scratch, naive, all four methods",
         ["scratch", "continuous", "continuous+init+reg+data+x0.25"]),
        ("fig2_initialization.png", "Fig. 2: initialization", ["scratch", "continuous", "continuous+init"]),
        ("fig3_objective.png", "Fig. 3: objective", ["scratch", "scratch+reg", "continuous", "continuous+reg"]),
        ("fig4_data.png", "Fig. 4: batch composition", ["scratch", "continuous", "continuous+data"]),
        ("fig5_scheduler.png", "Fig. 5: scheduler", ["scratch", "continuous", "continuous+x0.25", "scratch+x0.25"]),
    ]
    for fname, title, labels in figures:
        plot_curves(groups, labels, "scratch", os.path.join(results_dir, fname), title)
    print("\n".join(md[4:]), flush=True)
    print(f"wrote {results_dir}/table1.md, table1.csv and {len(figures)} figures", flush=True)
    return md


def plot_curves(groups, labels, reference, path, title):
    """Test accuracy against iterations: mean over seeds with a standard-error band; the iterations where
    each curve first reaches 99% (o) and 100% (*) of the reference's maximum are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [lab for lab in labels if lab in groups]
    if reference not in groups or not labels:
        return
    ref_it, ref_acc = S.mean_curve(groups[reference])
    a_ref = max(ref_acc)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for lab in labels:
        it, acc = S.mean_curve(groups[lab])
        per_seed = [[{e["iter"]: e["acc"] for e in ev}[i] for i in it] for _, ev in groups[lab]]
        se = np.std(per_seed, axis=0, ddof=1) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else np.zeros(len(it))
        (line,) = ax.plot(it, acc, label=f"{lab} (n={len(per_seed)})", lw=1.4)
        ax.fill_between(it, np.array(acc) - se, np.array(acc) + se, color=line.get_color(), alpha=0.2, lw=0)
        for r, marker in ((99, "o"), (100, "*")):
            hit = S.iterations_to_reach(it, acc, r / 100 * a_ref)
            if hit is not None:
                ax.plot([hit], [acc[it.index(hit)]], marker, color=line.get_color(), ms=7 if r == 100 else 5)
    ax.axhline(a_ref, color="gray", ls=":", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\n(o: 99%, *: 100% of {reference}'s max accuracy)", fontsize=10)
    lo = min(min(S.mean_curve(groups[lab])[1][len(S.mean_curve(groups[lab])[1]) // 10:]) for lab in labels)
    ax.set_ylim(max(0, lo - 5), a_ref + 0.15 * (a_ref - lo) + 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


REPORTS = {"table1": report_table1}


# ------------------------------------------------------------------------------------------------- main

def build_parser():
    p = argparse.ArgumentParser(prog="reproduce.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--plan", default="table1", choices=sorted(PLANS), help="what to regenerate")
    a("--seeds", type=int, default=5, help="number of seeds (0..seeds-1); each seed has its own class order")
    a("--iters", type=int, default=PAPER_ITERS, help="iterations per run; the schedule scales with it")
    a("--eval-every", type=int, help="evaluation interval (default: iters/195.5, i.e. 200 for 39,100)")
    a("--quick", action="store_true", help="a scaled-down plan: 2 seeds, 4,000 iterations")
    a("--dataset", default="cifar100", help="cifar100, cifar10 or folder")
    a("--data-dir", default="data", help="dataset folder (CIFAR is downloaded here)")
    a("--split", default="70+30", help="class split")
    a("--width", type=int, default=64, help="ResNet-18 width (64 = the paper's)")
    a("--batch-size", type=int, default=128, help="batch size (128 = the paper's)")
    a("--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto refuses to run without a GPU")
    a("--gpus", default="0", help="comma-separated GPU ids to spread runs over")
    a("--jobs-per-gpu", type=int, default=1, help="concurrent runs per GPU (with --device cpu: concurrent runs)")
    a("--runs", help="runs folder (default: runs/<dataset>-<split>-<iters>it-w<width>)")
    a("--results", help="tables and figures (default: results/ for the paper's setting, else results/<tag>/)")
    a("--list", action="store_true", help="print the plan's train.py commands, one per line, and exit")
    a("--wave", type=int, help="with --list: only runs at this dependency depth (0 = old models)")
    a("--report-only", action="store_true", help="only make tables and figures from finished runs")
    return p


def resolve(args):
    if args.quick:
        args.seeds, args.iters = min(args.seeds, 2), 4000 if args.iters == PAPER_ITERS else args.iters
    if args.seeds < 1 or args.iters < 1 or args.width < 1 or args.batch_size < 1 or args.jobs_per_gpu < 1:
        raise SystemExit("reproduce.sh: error: --seeds, --iters, --width, --batch-size and --jobs-per-gpu must be >= 1")
    if args.eval_every is None:
        args.eval_every = max(1, round(args.iters * 200 / PAPER_ITERS))
    tag = f"{args.dataset}-{args.split}-{args.iters}it-w{args.width}" + (f"-b{args.batch_size}" if args.batch_size != 128 else "")
    runs_dir = args.runs or os.path.join("runs", tag)
    paper_setting = (args.dataset, args.split, args.iters, args.width, args.batch_size, args.seeds) == \
        ("cifar100", "70+30", PAPER_ITERS, 64, 128, 5)
    results_dir = args.results or ("results" if paper_setting else os.path.join("results", f"{tag}-{args.seeds}seeds"))
    args.train_extra = []
    return runs_dir, results_dir


def main(argv=None):
    args = build_parser().parse_args(argv)
    runs_dir, results_dir = resolve(args)
    runs = PLANS[args.plan](range(args.seeds), runs_dir)
    by_name = {r.name: r for r in runs}
    if args.list:
        for r in sorted(runs, key=lambda r: (depth(r, by_name), not r.label.startswith("old"))):
            if args.wave is None or depth(r, by_name) == args.wave:
                print(shlex.join(["python", os.path.relpath(os.path.join(HERE, "train.py")),
                                  *train_argv(r, args, runs_dir)]))
        return 0
    if args.device == "auto":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("reproduce.sh: error: no GPU found. A full Table 1 is 105 runs of 39,100 iterations: "
                             "weeks on a CPU. Pass --device cpu to run on the CPU anyway (try --quick --width 8).")
        args.device = "cuda"
    gpus = [g for g in args.gpus.split(",") if g.strip()]
    args.slots = [(g, j) for g in (gpus if args.device == "cuda" else ["cpu"]) for j in range(args.jobs_per_gpu)]
    if not args.report_only:
        prepare_data(args)
        failed = execute(runs, args, runs_dir)
    else:
        failed = set()
    REPORTS[args.plan](runs, args, runs_dir, results_dir)
    return 1 if failed else 0


def prepare_data(args):
    """Download / decode the dataset once, before parallel runs read it (they run with --no-download)."""
    import data

    try:
        data.load_dataset(args.dataset, args.data_dir, download=True)
    except Exception as e:  # noqa: BLE001 - any failure to get the data is reported the same way
        raise SystemExit(f"reproduce.sh: error: cannot load {args.dataset} from {args.data_dir}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


if __name__ == "__main__":
    sys.exit(main())
