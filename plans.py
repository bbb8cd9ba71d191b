"""The experiments of the paper as plans of train.py runs, and the tables and figures made from their logs.

A run is named by its row label, a '+'-joined list of tokens that says exactly what it does, so one label
always means one configuration and plans that need the same run share it:

    continuous | scratch         start from the old model (--init old) or from a random init
    init                         shrink-perturb (Eq. 4): --init shrink_perturb, or --sp for scratch
    reg | l2                     L2-init (Eq. 5) | plain L2
    data | oldnew                easy/hard sampling (Sec. 3.3) | old/new balanced sampling (Fig. 4)
    x0.25                        schedule scale (Sec. 3.4);   multistep: the multistep schedule (App. A.6)
    alpha=, beta=, lambda=, c=, r=   a non-default hyper-parameter (App. A.3-A.5)

Plans: table1 (Table 1), table2a (Table 2a), table2b (Table 2b), fig6 (Fig. 6), appendix (App. A.3-A.6).
Each has a report that writes Markdown / CSV tables with the paper's published values beside ours, and
figures of test accuracy against iterations (mean over seeds, standard-error band, L99 / L100 marked).
"""
import math
import os
from dataclasses import dataclass, field

import speedup as S


@dataclass
class Run:
    name: str  # path below the runs folder: <split>/seed<k>/[task<t>/]<label>
    label: str
    split: str
    task: int
    seed: int
    flags: list  # train.py flags beyond the common ones
    deps: list = field(default_factory=list)  # names of runs whose ckpt.pt this one reads


HYPER = {"alpha": "--sp-alpha", "beta": "--sp-beta", "lambda": "--reg-lambda", "c": "--eh-c", "r": "--eh-r"}


def flags_for(label, task, old_ckpt):
    """train.py flags of a row label (see the module docstring); returns (flags, reads the old checkpoint)."""
    column, *toks = label.split("+")
    if column not in ("continuous", "scratch"):
        raise ValueError(f"label '{label}' must start with continuous or scratch")
    init = "init" in toks
    flags = ["--task", str(task)]
    if column == "continuous":
        flags += ["--init", "shrink_perturb" if init else "old"]
    else:
        flags += ["--init", "scratch"] + (["--sp"] if init else [])
    reads_old = column == "continuous"
    for t in toks:
        if t == "reg":
            flags += ["--reg", "l2init"]
        elif t == "l2":
            flags += ["--reg", "l2"]
        elif t == "data":
            flags += ["--sampler", "easy_hard"]
            reads_old = True  # learning speed of the old examples comes from the old model
        elif t == "oldnew":
            flags += ["--sampler", "old_new"]
        elif t == "multistep":
            flags += ["--schedule", "multistep"]
        elif t.startswith("x"):
            flags += ["--schedule-scale", t[1:]]
        elif "=" in t and t.split("=")[0] in HYPER:
            flags += [HYPER[t.split("=")[0]], t.split("=")[1]]
        elif t != "init":
            raise ValueError(f"label '{label}': unknown token '{t}'")
    if reads_old:
        flags += ["--old-ckpt", old_ckpt]
    return flags, reads_old


def old_run(split, seed):
    return Run(f"{split}/seed{seed}/old", "old", split, 0, seed, ["--task", "0"])


def cell(split, seed, label, old, runs_dir, task=1, prefix=""):
    """The run of `label` at `task`, continuing from (or sampling by) the run `old`."""
    flags, reads_old = flags_for(label, task, os.path.join(runs_dir, old.name, "ckpt.pt"))
    return Run(f"{split}/seed{seed}/{prefix}{label}", label, split, task, seed, flags,
               [old.name] if reads_old else [])


def two_task_plan(splits, seeds, labels, runs_dir):
    """An old model per split and seed, then the given rows at task 1."""
    runs = []
    for split in splits:
        for s in seeds:
            old = old_run(split, s)
            runs += [old] + [cell(split, s, lab, old, runs_dir) for lab in labels]
    return runs


# ------------------------------------------------------------------------------------ paper values
# Table 1: (Initialization, Regularization, Data, Scheduler) and (Continuous Max Acc, L99, L100,
# Scratch Max Acc, L99, L100); None is the paper's '/'.
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

OURS = "continuous+init+reg+data"
# Table 2a: rows (name, label) and, per dataset, the paper's (Max Acc, L99, L100) of each row.
TABLE2A_ROWS = [("Scratch", "scratch"), ("Continuous", "continuous"), ("Ours (x1)", OURS),
                ("Ours (x0.5)", OURS + "+x0.5")]
TABLE2A = {
    "cifar10": ("CIFAR-10 (8+2)", [(83.32, 1.55, 1.0), (81.37, None, None), (83.95, 1.83, 1.29), (84.33, 3.61, 2.92)]),
    "adaptiope": ("Adaptiope-PI (100+23)", [(74.59, 1.14, 1.0), (74.93, 1.17, 1.02), (77.51, 1.55, 1.42),
                                            (76.75, 2.36, 2.24)]),
    "imagenet100": ("ImageNet-100 (80+20)", [(62.34, 1.18, 1.0), (62.21, 1.23, None), (67.41, 2.16, 1.97),
                                             (66.26, 3.39, 3.09)]),
    "imagenet200": ("ImageNet-200 (180+20)", [(55.16, 1.18, 1.0), (53.5, None, None), (59.62, 1.69, 1.64),
                                              (58.54, 2.84, 2.75)]),
}
# Table 2b: the reference is Scratch + L2-init; the paper gives the two scratch rows once (on all classes).
TABLE2B_ROWS = [("Scratch + L2-init", "scratch+reg"), ("Scratch (x0.5)", "scratch+reg+x0.5"),
                ("Ours (x1.0)", OURS), ("Ours (x0.5)", OURS + "+x0.5"), ("Ours (x0.25)", OURS + "+x0.25")]
TABLE2B_SCRATCH = [(67.90, 1.29, 1.00), (67.14, None, None)]
TABLE2B = {
    "90+10": [(69.42, 1.56, 1.41), (69.07, 2.95, 2.65), (68.42, 5.05, 4.47)],
    "70+30": [(69.47, 1.61, 1.45), (68.77, 2.84, 2.56), (68.26, 4.74, 4.34)],
    "50+50": [(69.09, 1.50, 1.35), (68.42, 2.70, 2.37), (67.57, 4.34, None)],
    "30+70": [(68.81, 1.49, 1.31), (68.10, 2.56, 2.30), (66.93, None, None)],
}


def row_label(column, init, reg, data, scale):
    parts = [column] + ["init"] * init + ["reg"] * reg + ["data"] * data + ([f"x{scale:g}"] if scale != 1 else [])
    return "+".join(parts)


# ------------------------------------------------------------------------------------------- plans

def plan_table1(args, runs_dir):
    labels = [row_label(col, *key) for key, _ in TABLE1 for col in ("continuous", "scratch")]
    return two_task_plan([args.split], range(args.seeds), labels, runs_dir)


def plan_table2a(args, runs_dir):
    return two_task_plan([args.split], range(args.seeds), [lab for _, lab in TABLE2A_ROWS], runs_dir)


def plan_table2b(args, runs_dir):
    return two_task_plan(args.split.split(","), range(args.seeds), [lab for _, lab in TABLE2B_ROWS], runs_dir)


def plan_fig6(args, runs_dir):
    """A chain: task t continues from task t-1's continuous model with all four methods; beside it a scratch
    model per task on all data seen so far."""
    import data

    n_tasks = len(data.parse_split(args.split, 10 ** 6))
    chain_label = OURS + (f"+x{args.chain_scale:g}" if args.chain_scale != 1 else "")
    runs = []
    for s in range(args.seeds):
        prev = old_run(args.split, s)
        runs.append(prev)
        for t in range(1, n_tasks):
            cont = cell(args.split, s, chain_label, prev, runs_dir, task=t, prefix=f"task{t}/")
            runs += [cont, Run(f"{args.split}/seed{s}/task{t}/scratch", "scratch", args.split, t, s,
                               ["--task", str(t), "--init", "scratch"])]
            prev = cont
    return runs


# App. A.3-A.6 on 70+30: each sweep is a list of (legend, label); the default value's label is the plain
# row of Table 1, so those runs are shared.
APPENDIX = {
    "alpha": ("Fig. 8: shrink alpha", [(f"alpha={a:g}", "continuous+init" + (f"+alpha={a:g}" if a != 0.4 else ""))
                                       for a in (0.1, 0.2, 0.4, 0.6, 0.8, 0.9)]),
    "beta": ("Fig. 9: perturb beta", [(f"beta={b:g}", "continuous+init" + (f"+beta={b:g}" if b != 0.001 else ""))
                                      for b in (0, 0.0001, 0.001, 0.01, 0.1)]),
    "lambda": ("Fig. 10: L2-init lambda", [(f"lambda={x:g}", "continuous+reg" + (f"+lambda={x:g}" if x != 0.01 else ""))
                                           for x in (0.0001, 0.001, 0.01, 0.1)]),
    "easy_hard": ("Fig. 12: easy/hard c and r", [
        (f"{col} c={c:g} r={r:g}",
         f"{col}+data" + (f"+c={c:g}" if c != 0.2 else "") + (f"+r={r:g}" if r != 0.1 else ""))
        for col in ("continuous", "scratch") for c, r in ((0.2, 0.1), (0.1, 0.1), (0.4, 0.1), (0.2, 0), (0.2, 0.5))]),
    "multistep": ("Fig. 13: multistep against cosine", [
        ("scratch cosine", "scratch"), ("continuous cosine", "continuous"),
        ("scratch multistep", "scratch+multistep"), ("continuous multistep", "continuous+multistep")]),
    "old_new": ("Fig. 4: old/new and easy/hard sampling", [
        ("scratch", "scratch"), ("naive", "continuous"), ("old / new", "continuous+oldnew"),
        ("easy / hard", "continuous+data")]),
    "l2": ("Fig. 3: L2 against L2-init", [
        ("scratch", "scratch"), ("scratch + L2", "scratch+l2"), ("scratch + L2-init", "scratch+reg"),
        ("naive", "continuous"), ("continuous + L2", "continuous+l2"), ("continuous + L2-init", "continuous+reg")]),
}


def appendix_labels():
    labels = ["scratch", "continuous"]
    for _, rows in APPENDIX.values():
        labels += [lab for _, lab in rows if lab not in labels]
    return labels


def plan_appendix(args, runs_dir):
    return two_task_plan([args.split], range(args.seeds), appendix_labels(), runs_dir)


PLANS = {"table1": plan_table1, "table2a": plan_table2a, "table2b": plan_table2b, "fig6": plan_fig6,
         "appendix": plan_appendix}
# the setting each plan has in the paper (--dataset / --split default to these)
PLAN_DEFAULTS = {"table1": ("cifar100", "70+30"), "table2a": ("cifar10", "8+2"),
                 "table2b": ("cifar100", "90+10,70+30,50+50,30+70"), "fig6": ("cifar100", "50+5x10"),
                 "appendix": ("cifar100", "70+30")}


# ----------------------------------------------------------------------------------------- reports

def collect(runs, runs_dir, finished):
    """{label: [(header, evals), ...]} of the finished runs among `runs`."""
    return S.group_runs([os.path.join(runs_dir, r.name) for r in runs if finished(os.path.join(runs_dir, r.name))])


def row_stats(groups, label, ref):
    """Max Acc (mean ± s.e. over seeds), L99 / L100 on the seed-averaged curve against `ref` (the reference
    label), and the same ratios in training seconds; None if the row has no finished run."""
    if label not in groups or ref not in groups:
        return None
    ref_it, ref_acc = S.mean_curve(groups[ref])
    _, ref_sec = S.mean_curve(groups[ref], "train_seconds")
    it, acc = S.mean_curve(groups[label])
    _, sec = S.mean_curve(groups[label], "train_seconds")
    m, se = S.mean_se([max(e["acc"] for e in ev) for _, ev in groups[label]])
    out = {"n": len(groups[label]), "max_acc": m, "max_acc_se": se}
    for r in (99, 100):
        out[f"L{r}"] = S.speedup(ref_it, ref_acc, it, acc, r)
        out[f"L{r}_seconds"] = S.speedup_cost(ref_it, ref_acc, ref_sec, it, acc, sec, r)
    return out


def cells(st, paper=None):
    """Markdown cells Max Acc, L99, L100 (ours, with the paper's value in brackets when given)."""
    if st is None:
        return ["(not run)"] * 3
    ours = [f"{st['max_acc']:.2f} ± {st['max_acc_se']:.2f}", S.fmt_speedup(st["L99"]), S.fmt_speedup(st["L100"])]
    if paper is None:
        return ours
    return [f"{ours[0]} ({paper[0]:.2f})", f"{ours[1]} ({S.fmt_speedup(paper[1])})",
            f"{ours[2]} ({S.fmt_speedup(paper[2])})"]


def csv_fields(st, paper=(None, None, None)):
    v = lambda x: "" if x is None else f"{x:.6g}"  # noqa: E731
    keys = ["n", "max_acc", "max_acc_se", "L99", "L100", "L99_seconds", "L100_seconds"]
    return [v(st[k]) if st else "" for k in keys] + [v(x) for x in paper]


CSV_HEAD = "n,max_acc,max_acc_se,L99,L100,L99_seconds,L100_seconds,paper_max_acc,paper_L99,paper_L100"


def header_lines(title, args):
    return [f"# {title}", "",
            f"{args.dataset}, ResNet-18 (width {args.width}), batch {args.batch_size}, {args.iters} iterations, "
            f"{args.seeds} seed(s); command: `./reproduce.sh {' '.join(args.argv)}`", "",
            "Ours: Max Acc is the mean ± standard error over seeds; L99 / L100 (Eq. 2) are computed on the "
            "seed-averaged curves; the paper's value is in brackets; '/' = the target accuracy was not reached. "
            "'seconds' columns: the same ratios in measured training seconds instead of iterations.", ""]


def write_outputs(results_dir, name, md, csv):
    os.makedirs(results_dir, exist_ok=True)
    S.write_atomic(os.path.join(results_dir, f"{name}.md"), "\n".join(md) + "\n")
    S.write_atomic(os.path.join(results_dir, f"{name}.csv"), "\n".join(csv) + "\n")
    print("\n".join(md), flush=True)


def report_table1(runs, args, runs_dir, results_dir, finished):
    groups = collect(runs, runs_dir, finished)
    mark = lambda on: "✓" if on else ""  # noqa: E731
    md = header_lines(f"Table 1: {args.dataset} {args.split}", args)
    md += ["| Initialization | Regularization | Data | Scheduler | Continuous Max Acc | L99 | L100 "
           "| Scratch Max Acc | L99 | L100 | L100 (seconds) cont. / scratch |", "|" + "---|" * 11]
    csv = ["init,reg,data,scheduler,column," + CSV_HEAD]
    for (init, reg, data, scale), paper in TABLE1:
        row = [mark(init), mark(reg), mark(data), f"x{scale:g}" if scale != 1 else ""]
        secs = []
        for c, column in enumerate(("continuous", "scratch")):
            st = row_stats(groups, row_label(column, init, reg, data, scale), "scratch")
            row += cells(st, paper[3 * c: 3 * c + 3])
            secs.append(S.fmt_speedup(st["L100_seconds"]) if st else "-")
            csv.append(",".join([str(init), str(reg), str(data), f"{scale:g}", column] +
                                csv_fields(st, paper[3 * c: 3 * c + 3])))
        md.append("| " + " | ".join(row + [" / ".join(secs)]) + " |")
    write_outputs(results_dir, "table1", md, csv)
    figures = [
        ("fig1_scratch_naive_ours", "Fig. 1: scratch, naive, all four methods",
         ["scratch", "continuous", "continuous+init+reg+data+x0.25"]),
        ("fig2_initialization", "Fig. 2: initialization", ["scratch", "continuous", "continuous+init"]),
        ("fig3_objective", "Fig. 3: objective", ["scratch", "scratch+reg", "continuous", "continuous+reg"]),
        ("fig4_data", "Fig. 4: batch composition", ["scratch", "continuous", "continuous+data"]),
        ("fig5_scheduler", "Fig. 5: scheduler", ["scratch", "continuous", "continuous+x0.25", "scratch+x0.25"]),
    ]
    for fname, title, labels in figures:
        plot_curves(groups, [(lab, lab) for lab in labels], "scratch", os.path.join(results_dir, f"{fname}.png"), title)


def report_table2a(runs, args, runs_dir, results_dir, finished):
    groups = collect(runs, runs_dir, finished)
    key = args.compare_to or (args.dataset if args.dataset in TABLE2A else None)
    name, paper = TABLE2A[key] if key else (f"{args.dataset} ({args.split})", [None] * len(TABLE2A_ROWS))
    md = header_lines(f"Table 2a: {name}" + (f", run on {args.dataset} {args.split}" if key else ""), args)
    md += ["| Algorithm | Max Acc | L99 | L100 | L99 (seconds) | L100 (seconds) |", "|" + "---|" * 6]
    csv = ["algorithm,label," + CSV_HEAD]
    for (title, label), p in zip(TABLE2A_ROWS, paper):
        st = row_stats(groups, label, "scratch")
        sec = [S.fmt_speedup(st[f"L{r}_seconds"]) if st else "-" for r in (99, 100)]
        md.append("| " + " | ".join([title] + cells(st, p) + sec) + " |")
        csv.append(",".join([title, label] + csv_fields(st, p or (None, None, None))))
    md += ["", "Wall time of every run (training and evaluation):", ""]
    for label, rs in sorted(groups.items()):
        md.append(f"- {label}: " + ", ".join(f"seed {h['config']['seed']}: {ev[-1]['wall']:.0f} s" for h, ev in rs))
    write_outputs(results_dir, f"table2a_{key or args.dataset}", md, csv)
    plot_curves(groups, [(t, lab) for t, lab in TABLE2A_ROWS], "scratch",
                os.path.join(results_dir, f"table2a_{key or args.dataset}.png"), f"Table 2a: {name}")


def report_table2b(runs, args, runs_dir, results_dir, finished):
    md = header_lines("Table 2b: ratios of old and new classes (reference: Scratch + L2-init)", args)
    md += ["| Split | Algorithm | Max Acc | L99 | L100 | L100 (seconds) |", "|" + "---|" * 6]
    csv = ["split,algorithm,label," + CSV_HEAD]
    for split in args.split.split(","):
        groups = collect([r for r in runs if r.split == split], runs_dir, finished)
        paper = TABLE2B_SCRATCH + TABLE2B[split] if split in TABLE2B else [None] * len(TABLE2B_ROWS)
        for (title, label), p in zip(TABLE2B_ROWS, paper):
            st = row_stats(groups, label, "scratch+reg")
            sec = S.fmt_speedup(st["L100_seconds"]) if st else "-"
            md.append("| " + " | ".join([split, title] + cells(st, p) + [sec]) + " |")
            csv.append(",".join([split, title, label] + csv_fields(st, p or (None, None, None))))
        plot_curves(groups, TABLE2B_ROWS, "scratch+reg",
                    os.path.join(results_dir, f"table2b_{split.replace('+', '-')}.png"), f"Table 2b: {split}")
    write_outputs(results_dir, "table2b", md, csv)


def report_fig6(runs, args, runs_dir, results_dir, finished):
    """Per task: scratch and chain Max Acc, L100 of the chain against that task's scratch model, and the
    cumulative iterations of the chain (each task stopped at its L100 point, or run in full when it never gets
    there) against the sum of the scratch runs (each stopped where it reaches its own best)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in runs if r.task > 0})
    md = header_lines(f"Fig. 6: {args.dataset} {args.split}, a chain with all four methods "
                      f"(schedule x{args.chain_scale:g}) against a scratch model per task", args)
    md += ["| Task | Classes | Scratch Max Acc | Chain Max Acc | L100 | chain iterations to L100 (cumulative) "
           "| scratch iterations to its max (cumulative) |", "|" + "---|" * 7]
    csv = ["task,classes,scratch_max_acc,chain_max_acc,L100,chain_iters,chain_cumulative,scratch_iters,"
           "scratch_cumulative"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    cum_chain = cum_scratch = offset = 0
    for t in tasks:
        rs = [r for r in runs if r.task == t]
        groups = collect(rs, runs_dir, finished)
        chain_label = next(r.label for r in rs if r.label != "scratch")
        if "scratch" not in groups or chain_label not in groups:
            md.append(f"| {t} | | (not run) | | | | |")
            continue
        header = groups["scratch"][0][0]
        ref_it, ref_acc = S.mean_curve(groups["scratch"])
        it, acc = S.mean_curve(groups[chain_label])
        st = row_stats(groups, chain_label, "scratch")
        sc = row_stats(groups, "scratch", "scratch")
        a_ref = max(ref_acc)
        hit = S.iterations_to_reach(it, acc, a_ref)
        chain_cost = hit if hit is not None else it[-1]
        scratch_cost = S.iterations_to_reach(ref_it, ref_acc, a_ref)
        cum_chain += chain_cost
        cum_scratch += scratch_cost
        n_cls = header["num_classes"]
        md.append(f"| {t} | {n_cls} | {cells(sc)[0]} | {cells(st)[0]} | {S.fmt_speedup(st['L100'])} "
                  f"| {chain_cost} ({cum_chain}) | {scratch_cost} ({cum_scratch}) |")
        csv.append(",".join(str(x) for x in (t, n_cls, f"{sc['max_acc']:.6g}", f"{st['max_acc']:.6g}",
                                             "" if st["L100"] is None else f"{st['L100']:.6g}", chain_cost,
                                             cum_chain, scratch_cost, cum_scratch)))
        # accuracy on the full test set: classes not seen yet count as errors
        frac = header["num_test"] / header["num_test_all"]
        full = [a * frac for a in acc]
        first = t == tasks[0]  # label each kind of mark once
        ax.plot([offset + i for i in it], full, color="C0", lw=1.2, label="continuous (ours)" if first else None)
        ax.plot([offset + i for i in ref_it], [a * frac for a in ref_acc], color="C1", lw=0.8, alpha=0.7,
                label="scratch on all data so far" if first else None)
        ax.fill_between([offset, offset + it[-1]], [100 * frac] * 2, [100] * 2, color="gray", alpha=0.15, lw=0,
                        label="not reachable (unseen classes)" if first else None)
        if hit is not None:
            ax.plot([offset + hit], [full[it.index(hit)]], "o", color="gold", mec="k", ms=6,
                    label="L100 point" if first else None)
        offset += it[-1]
    md += ["", f"Chain total: {cum_chain} iterations; scratch runs total: {cum_scratch} iterations "
           f"(scratch / chain = {S.fmt_speedup(S.ratio(cum_scratch, cum_chain))})."]
    write_outputs(results_dir, "fig6", md, csv)
    ax.set_xlabel("cumulative iterations (task after task)")
    ax.set_ylabel("test accuracy on all classes (%)")
    ax.set_title(f"Fig. 6: {args.split}", fontsize=10)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, os.path.join(results_dir, "fig6.png"))


def report_appendix(runs, args, runs_dir, results_dir, finished):
    groups = collect(runs, runs_dir, finished)
    md = header_lines(f"Appendix A.3-A.6 sweeps: {args.dataset} {args.split} (reference: scratch)", args)
    csv = ["sweep,setting,label," + CSV_HEAD]
    for sweep, (title, rows) in APPENDIX.items():
        md += [f"## {title}", "", "| Setting | Max Acc | L99 | L100 | L100 (seconds) |", "|" + "---|" * 5]
        for name, label in rows:
            st = row_stats(groups, label, "scratch")
            md.append("| " + " | ".join([name] + cells(st) + [S.fmt_speedup(st["L100_seconds"]) if st else "-"]) + " |")
            csv.append(",".join([sweep, name, label] + csv_fields(st)))
        md.append("")
        legend = rows if any(lab == "scratch" for _, lab in rows) else [("scratch", "scratch")] + rows
        plot_curves(groups, legend, "scratch", os.path.join(results_dir, f"appendix_{sweep}.png"), title)
    write_outputs(results_dir, "appendix", md, csv)


REPORTS = {"table1": report_table1, "table2a": report_table2a, "table2b": report_table2b, "fig6": report_fig6,
           "appendix": report_appendix}


# ------------------------------------------------------------------------------------------ figures

def save(fig, path):
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def plot_curves(groups, rows, reference, path, title):
    """Test accuracy against iterations for rows [(legend, label)]: mean over seeds with a standard-error
    band; where each curve first reaches 99% (o) and 100% (*) of the reference's maximum is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [(name, lab) for name, lab in rows if lab in groups]
    if reference not in groups or not rows:
        return
    _, ref_acc = S.mean_curve(groups[reference])
    a_ref = max(ref_acc)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lows = []
    for name, lab in rows:
        it, acc = S.mean_curve(groups[lab])
        per_seed = np.array([[{e["iter"]: e["acc"] for e in ev}[i] for i in it] for _, ev in groups[lab]])
        se = per_seed.std(0, ddof=1) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else np.zeros(len(it))
        (line,) = ax.plot(it, acc, label=f"{name} (n={len(per_seed)})", lw=1.4)
        ax.fill_between(it, np.array(acc) - se, np.array(acc) + se, color=line.get_color(), alpha=0.2, lw=0)
        for r, marker in ((99, "o"), (100, "*")):
            hit = S.iterations_to_reach(it, acc, r / 100 * a_ref)
            if hit is not None:
                ax.plot([hit], [acc[it.index(hit)]], marker, color=line.get_color(), ms=8 if r == 100 else 5)
        lows.append(min(acc[len(acc) // 10:]))
    ax.axhline(a_ref, color="gray", ls=":", lw=1)
    lo = min(lows)
    ax.set_ylim(max(0, lo - 5), min(100, a_ref + 0.15 * max(a_ref - lo, 1) + 1))
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\n(o: 99%, *: 100% of {reference}'s max accuracy, dotted)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, path)
