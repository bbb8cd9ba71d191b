"""Tables and figures of a plan (plans.py), made from the finished runs' logs only, with the paper's
published values in brackets beside ours. How Max Acc, L99 and L100 are computed is written into every table's
header (write); figures show test accuracy against iterations, the mean over seeds with a standard-error band.
Figs. 11, 14 and 15 (plan analysis) are drawn by report_analysis.py.
"""
import math
import os
import re
import shutil
import sys

import numpy as np

import runlog
import speedup as S

from . import plans as P
from .runs import check_summary, group_runs

SPEEDUPS = ["L99", "L100", "L99_seconds", "L100_seconds", "L99_seeds", "L99_seeds_se", "L99_seeds_reached",
            "L100_seeds", "L100_seeds_se", "L100_seeds_reached"]  # speedup.row_stats; the per-seed L_r: Eq. 2 per seed
STATS = ["n", "left_out", "max_acc", "max_acc_se"] + SPEEDUPS
PAPER = ["paper_max_acc", "paper_L99", "paper_L100"]


def finished(runs, runs_dir):
    """The folders of the finished runs among `runs`."""
    return [d for d in (os.path.join(runs_dir, r.name) for r in runs) if runlog.is_finished(d)]


def collect(runs, runs_dir):
    """{label: [(header, evals), ...]} of the finished runs among `runs`."""
    return group_runs(finished(runs, runs_dir))


def cells(st, paper=None, seconds=False):
    """Markdown cells Max Acc, L99, L100 (with the paper's value in brackets when given), then L99 and L100 per
    seed (mean ± s.e. of each seed's own L_r, speedup.fmt_seeds); with seconds, then L99 and L100 in training
    seconds."""
    if st is None:
        return ["(not run)"] * 3 + ["-"] * (2 + 2 * seconds)
    ours = [S.fmt_max_acc(st), S.fmt_speedup(st["L99"], st["L99_fragile"]),
            S.fmt_speedup(st["L100"], st["L100_fragile"])]
    per_seed = [S.fmt_seeds(st, r) for r in (99, 100)]
    secs = [S.fmt_speedup(st[f"L{r}_seconds"], st[f"L{r}_fragile"]) for r in (99, 100)] if seconds else []
    if paper is not None:
        ours = [f"{ours[0]} ({paper[0]:.2f})"] + [f"{o} ({S.fmt_speedup(p)})" for o, p in zip(ours[1:], paper[1:])]
    return ours + per_seed + secs


def csv_row(keys, st, paper):
    """CSV row: the row's keys, our STATS, the paper's (Max Acc, L99, L100)."""
    return S.csv_line(list(keys) + [st[k] if st else None for k in STATS] + list(paper or [None] * 3))


def recorded_argv(argv):
    """The command a table records: argv without --report-only, --runs DIR and --results DIR, which say where
    logs are read and tables written, not what they hold: a table rebuilt from copied logs is the same file."""
    out, skip = [], False
    for a in argv:
        if skip or a == "--report-only" or a.split("=")[0] in ("--runs", "--results"):
            skip = a in ("--runs", "--results")
            continue
        out.append(a)
    return out


def write(results_dir, name, title, args, md, csv, speedups=True):
    """Markdown (a header saying how it was made and, with speedups, how Max Acc, L99 and L100 are computed;
    then md) and CSV, atomically; the Markdown is printed."""
    n = getattr(args, "finished_runs", None)  # reproduce.main counts them
    head = [f"# {title}", "",
            f"{args.dataset}, ResNet-18 (width {args.width}), batch {args.batch_size}, {args.iters} iterations, "
            f"{args.seeds} seed(s)" + (f", {n} finished run(s)" if n is not None else "") +
            f"; command: `./reproduce.sh {' '.join(recorded_argv(args.argv))}`", ""]
    note = [f"Ours: Max Acc is the maximum of the seed-averaged test-accuracy curve ± the standard error of the seeds "
            f"at that iteration; L99 / L100 (Eq. 2) are computed on the seed-averaged curves with a_scratch = the "
            f"reference's {'maximum' if args.target == 'max' else 'final accuracy'}; the paper's value is in "
            f"brackets; '/' = the target accuracy was not reached; † = within one standard error of the target, the "
            f"verdict could flip. 'per seed': L99 / L100 of each seed's curve against the same seed's reference, "
            f"mean ± standard error over the seeds that reach the target, (k/n) when only k of the n seeds do (the "
            f"paper reports neither kind of error bar). A row and its reference are compared on the seeds both "
            f"have; ‡ marks a row whose seeds differed (runs without a partner left out). 'seconds': the same "
            f"ratios (on the seed-averaged curves) in measured training seconds instead of iterations.", ""]
    md = head + note * speedups + md
    os.makedirs(results_dir, exist_ok=True)
    keep_fuller(results_dir, name, n)
    runlog.write_atomic(os.path.join(results_dir, f"{name}.md"), "\n".join(md) + "\n")
    runlog.write_atomic(os.path.join(results_dir, f"{name}.csv"), "\n".join(csv) + "\n")
    print("\n".join(md), flush=True)


def finished_in(md_path):
    """The number of finished runs a table of `write` was made from (None: no such table, or not recorded)."""
    try:
        with open(md_path) as f:
            found = re.search(r", (\d+) finished run\(s\);", f.read(4096))
    except OSError:
        return None
    return int(found.group(1)) if found else None


def keep_fuller(results_dir, name, n):
    """Before a table made from n finished runs replaces one made from more: copy the old one to
    <name>.prev.md / .csv, and say so."""
    before = finished_in(os.path.join(results_dir, f"{name}.md"))
    if n is None or before is None or n >= before:
        return
    for ext in ("md", "csv"):
        path = os.path.join(results_dir, f"{name}.{ext}")
        if os.path.exists(path):
            runlog.replace_atomic(os.path.join(results_dir, f"{name}.prev.{ext}"),
                                  lambda tmp: shutil.copyfile(path, tmp))
    print(f"reproduce.sh: warning: {results_dir}/{name}.md was made from {before} finished runs, this one from {n}; "
          f"the old table is kept as {name}.prev.md", file=sys.stderr)


def report_table1(runs, args, runs_dir, results_dir):
    groups = collect(runs, runs_dir)
    mark = lambda on: "✓" if on else ""  # noqa: E731
    md = ["| Initialization | Regularization | Data | Scheduler | Continuous Max Acc | L99 | L100 | L99, L100 per "
          "seed | Scratch Max Acc | L99 | L100 | L99, L100 per seed | L99 (seconds) cont., scratch | L100 "
          "(seconds) cont., scratch |", "|" + "---|" * 14]
    csv = [",".join(["init", "reg", "data", "scheduler", "column", "label"] + STATS + PAPER)]
    for key, paper in P.TABLE1:
        row, secs = [mark(key[0]), mark(key[1]), mark(key[2]), f"x{key[3]:g}" if key[3] != 1 else ""], []
        for c, column in enumerate(("continuous", "scratch")):
            label = P.row_label(column, *key)
            st = S.row_stats(groups, label, "scratch", target=args.target)
            ours = cells(st, paper[3 * c: 3 * c + 3], seconds=True)
            row += ours[:3] + [", ".join(ours[3:5])]  # not ' / ': '/' is a cell's "not reached"
            secs.append(ours[5:])  # L99, L100 in training seconds
            csv.append(csv_row([*key[:3], key[3], column, label], st, paper[3 * c: 3 * c + 3]))
        md.append("| " + " | ".join(row + [", ".join(s) for s in zip(*secs)]) + " |")
    md += ["", "The paper's Table 1 repeats the Data row's Scratch cells (66.61, x1.54, x1.31) in the Init + Data "
           "row, most likely a copy error; we print them as published."]
    write(results_dir, "table1", f"Table 1: {args.dataset} {args.split}", args, md, csv)
    for fname, title, labels in [
        ("fig1_scratch_naive_ours", "Fig. 1: scratch, naive, all four methods (x0.5, as the caption's 2.7x)",
         ["scratch", "continuous", P.OURS + "+x0.5"]),
        ("fig2_initialization", "Fig. 2: initialization", ["scratch", "continuous", "continuous+init"]),
        ("fig3_objective", "Fig. 3: objective", ["scratch", "scratch+reg", "continuous", "continuous+reg"]),
        ("fig4_data", "Fig. 4: batch composition", ["scratch", "continuous", "continuous+data"]),
        ("fig5_scheduler", "Fig. 5: scheduler", ["scratch", "continuous", "continuous+x0.75", "continuous+x0.5",
                                                 "continuous+x0.25", "scratch+x0.25"]),
    ]:
        plot_curves(groups, [(P.paper_name(lab), lab) for lab in labels], "scratch",
                    os.path.join(results_dir, f"{fname}.png"), title, args)


def report_sections(runs, args, runs_dir, results_dir, notes=()):
    """table2a, table2b, appendix: a sub-table and a figure per Section, notes (Markdown lines), and every run's
    wall time."""
    name, sections = P.SECTIONS[args.plan](args)
    md, csv, walls = [], [",".join(["section", "row", "label"] + STATS + PAPER)], []
    for sec in sections:
        groups = collect([r for r in runs if sec.split in [r.split] + r.also_for], runs_dir)
        md += [f"## {sec.title}", "", "| Row | Max Acc | L99 | L100 | L99 per seed | L100 per seed | L99 (seconds) "
               "| L100 (seconds) |", "|" + "---|" * 8]
        for row, label, paper in sec.rows:
            st = S.row_stats(groups, label, sec.reference, target=args.target)
            md.append("| " + " | ".join([row] + cells(st, paper, seconds=True)) + " |")
            csv.append(csv_row([sec.key, row, label], st, paper))
        md.append("")
        fig = f"{name}_{sec.key.replace('+', '-')}.png" if len(sections) > 1 else f"{name}.png"
        legend = [(row, lab) for row, lab, _ in sec.rows]
        if sec.reference not in [lab for _, lab in legend]:
            legend.insert(0, (P.paper_name(sec.reference), sec.reference))
        plot_curves(groups, legend, sec.reference, os.path.join(results_dir, fig), sec.title, args)
        walls += [f"- {sec.split} {label}: " + ", ".join(f"seed {h['config']['seed']}: {ev[-1]['wall']:.0f} s"
                                                        for h, ev in rs) for label, rs in sorted(groups.items())]
    md += list(notes) + ["Wall time of every run (training and evaluation):", ""] + sorted(set(walls))
    titles = {"table2b": "Table 2b: ratios of old and new classes", "appendix": "Appendix A.3-A.6: sweeps"}
    write(results_dir, name, titles.get(name, sections[0].title), args, md, csv)


def carry_forward(seeds):
    """[(header, evals)] of runs that may have stopped early (Fig. 6's chain links stop at their own seed's
    scratch maximum), each holding its last evaluation to the end of the longest: a stopped model does not
    change, and the seed means then cover every iteration instead of stopping at the earliest seed's end."""
    grid = sorted({e["iter"] for _, evals in seeds for e in evals})
    out = []
    for header, evals in seeds:
        at, last, padded = {e["iter"]: e for e in evals}, None, []
        for i in grid:
            last = at[i] if i in at else {**last, "iter": i}
            padded.append(last)
        out.append((header, padded))
    return out


def report_fig6(runs, args, runs_dir, results_dir):
    """Per task (Sec. 4.2, Fig. 6): scratch and chain Max Acc, L99 / L100 of the chain against that task's
    scratch model, in iterations and in training seconds, and what each cost: the iterations every chain run
    actually trained (the next task starts from its last checkpoint, so nothing is left uncounted) against the
    scratch runs' full iterations, and against the scratch runs stopped at their own best (a lower bound no real
    scratch run could know in advance). Beside the chain's total, the cumulative cost to each task's L100 point:
    everything the earlier tasks trained plus this task's iterations to its L100 point (on the seed-averaged
    curve), the cost of having a model at scratch's accuracy for this task. Means over seeds."""
    md = ["| Task | Classes | Scratch Max Acc | Chain Max Acc | L99 | L100 | L99 per seed | L100 per seed "
          "| L99 (seconds) | L100 (seconds) | chain to its L100 point (cumulative) | chain iterations (cumulative) "
          "| scratch iterations (cumulative) | scratch to its max (cumulative) |", "|" + "---|" * 14]
    csv = ["task,classes,n,left_out,scratch_max_acc,chain_max_acc," + ",".join(SPEEDUPS) + ",chain_to_L100,"
           "chain_to_L100_cumulative,chain_iters,chain_cumulative,scratch_iters,"
           "scratch_cumulative,scratch_to_max,scratch_to_max_cumulative"]
    fig, ax = pyplot().subplots(figsize=(8, 4.2))
    cum = np.zeros(3)  # chain, scratch, scratch to its max
    offset = 0.0
    for t in sorted({r.task for r in runs if r.task > 0}):
        rs = [r for r in runs if r.task == t]
        ran_groups = collect(rs, runs_dir)
        groups = {lab: carry_forward(seeds) for lab, seeds in ran_groups.items()}
        chain = next(r.label for r in rs if r.label != "scratch")
        st = S.row_stats(groups, chain, "scratch", target=args.target)
        sc = S.row_stats(groups, "scratch", "scratch", target=args.target)
        if st is None:
            md.append(f"| {t} | | (not run) |" + " |" * 11)
            continue
        header = groups["scratch"][0][0]
        ran = lambda label: float(np.mean([ev[-1]["iter"] for _, ev in ran_groups[label]]))  # noqa: E731
        to_max = float(np.mean([max(ev, key=lambda e: (e["acc"], -e["iter"]))["iter"] for _, ev in groups["scratch"]]))
        costs = np.array([ran(chain), ran("scratch"), to_max])
        cur, ref, _ = S.paired(groups, chain, "scratch")  # the seeds st is computed on
        it, acc = S.mean_curve(cur)
        ref_it, ref_acc = S.mean_curve(ref)
        hit = S.iterations_to_reach(it, acc, st["a_scratch"])
        to_l100 = None if hit is None else cum[0] + hit  # the earlier tasks' whole training, then this one's
        cum += costs
        md.append(f"| {t} | {header['num_classes']} | {cells(sc)[0]} | {cells(st)[0]} | "
                  + " | ".join(cells(st, seconds=True)[1:]) + " | "
                  + ("/" if hit is None else f"{hit:.0f} ({to_l100:.0f})") + " | "
                  + " | ".join(f"{c:.0f} ({k:.0f})" for c, k in zip(costs, cum)) + " |")
        csv.append(S.csv_line([t, header["num_classes"], st["n"], st["left_out"], sc["max_acc"], st["max_acc"]]
                              + [st[k] for k in SPEEDUPS]
                              + [hit, to_l100, costs[0], cum[0], costs[1], cum[1], costs[2], cum[2]]))
        frac = header["num_test"] / header["num_test_all"]  # on the full test set unseen classes are errors
        first = offset == 0  # label each kind of mark once
        ax.plot([offset + i for i in it], [a * frac for a in acc], color="C0", lw=1.2,
                label="Ours (continuous chain)" if first else None)
        ax.plot([offset + i for i in ref_it], [a * frac for a in ref_acc], color="C1", lw=0.8, alpha=0.7,
                label="Scratch on all data so far" if first else None)
        ax.fill_between([offset, offset + costs[0]], [100 * frac] * 2, [100] * 2, color="gray", alpha=0.15, lw=0,
                        label="not reachable (unseen classes)" if first else None)
        if hit is not None:
            ax.plot([offset + hit], [acc[it.index(hit)] * frac], "o", color="gold", mec="k", ms=6,
                    label="L100 point" if first else None)
        offset += costs[0]
    stop = ("ends where it reaches its scratch model's accuracy (--chain-stop l100)" if args.chain_stop == "l100"
            else "runs its schedule to the end (--chain-stop schedule)")
    md += ["", f"Each task of the chain {stop}; the next task continues from that checkpoint, so the chain's "
           f"iterations are everything it trained. 'chain to its L100 point': the iteration at which this task's "
           f"seed-averaged curve first reaches its scratch model's Max Acc, and (cumulative) that plus everything "
           f"the earlier tasks trained. Chain total: {cum[0]:.0f} iterations; scratch runs total: "
           f"{cum[1]:.0f} (scratch / chain = {S.fmt_speedup(S.ratio(cum[1], cum[0]))}); scratch runs stopped at "
           f"their best: {cum[2]:.0f} (= {S.fmt_speedup(S.ratio(cum[2], cum[0]))})."]
    write(results_dir, "fig6", f"Fig. 6: {args.dataset} {args.split}, a chain with all four methods (schedule "
          f"x{args.chain_scale:g}) against a scratch model per task", args, md, csv)
    ax.set(xlabel="cumulative training iterations of the chain (task after task)",
           ylabel="test accuracy on all classes (%)", ylim=(0, 100))
    ax.set_title(f"Fig. 6: {args.split}", fontsize=10)
    if ax.get_legend_handles_labels()[0]:  # a task has both curves (matplotlib warns of an empty legend)
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, os.path.join(results_dir, "fig6.png"))


def fig7_verdicts(naive, ours):
    """Sec. 4.3's reading of Fig. 7 on two row_stats rows (README "Choices": Fig. 7's reading): (speed, higher,
    gap, margin). speed: Naive's L99 against Ours', "nearly as fast" when at least 2/3 of it; higher: whether
    Ours' Max Acc is above Naive's by more than one combined standard error (gap, margin)."""
    n99, o99 = naive["L99"], ours["L99"]
    speed = ("not nearly as fast (it never gets there)" if n99 is None else "faster (Ours never gets there)"
             if o99 is None else "as fast or faster" if n99 >= o99 else "nearly as fast" if n99 >= 2 / 3 * o99
             else "not nearly as fast")
    gap, margin = ours["max_acc"] - naive["max_acc"], math.hypot(ours["max_acc_se"], naive["max_acc_se"])
    return speed, "higher" if gap > margin else "not higher", gap, margin


def report_fig7(runs, args, runs_dir, results_dir):
    """Fig. 7 (Sec. 4.3): Scratch, Naive and Ours after a new domain. The table: Max Acc on both domains, L99 /
    L100 against Scratch, and the final accuracy on each domain (means over seeds); then the paper's reading
    ("naively continuing is nearly as fast as our method, our final test accuracy is considerably higher")
    checked on our numbers. The figure: accuracy against iterations on both domains, the old and the new."""
    groups = collect([r for r in runs if r.task == 1], runs_dir)
    old_dom, new_dom = args.split.split("+")
    md = [f"| Row | Max Acc (both domains) | L99 | L100 | L99 per seed | L100 per seed | L99 (seconds) "
          f"| L100 (seconds) | final acc {old_dom} | final acc {new_dom} |", "|" + "---|" * 10]
    csv = [",".join(["row", "label"] + STATS + ["final_acc_old_domain", "final_acc_new_domain"])]
    stats = {}
    for row, label in P.FIG7_ROWS:
        st = stats[label] = S.row_stats(groups, label, "scratch", target=args.target)
        if st is None:
            md.append(f"| {row} | (not run) |" + " |" * 8)
            continue
        final = [float(np.mean([ev[-1][k] for _, ev in groups[label]])) for k in ("acc_old", "acc_new")]
        md.append("| " + " | ".join([row] + cells(st, seconds=True) + [f"{a:.2f}" for a in final]) + " |")
        csv.append(S.csv_line([row, label] + [st[k] for k in STATS] + final))
    naive, ours = stats["continuous"], stats[P.OURS]
    if naive and ours:
        n99, o99 = naive["L99"], ours["L99"]
        speed, higher, gap, margin = fig7_verdicts(naive, ours)
        md += ["", "The paper's reading of Fig. 7, on our runs (the paper gives no numbers, only the figure):", "",
               f"- \"Naively continuing to train is nearly as fast as our method\": Naive reaches 99% of Scratch's "
               f"Max Acc with L99 {S.fmt_speedup(n99)}, Ours with {S.fmt_speedup(o99)}: Naive is **{speed}** (our "
               f"rule for nearly: Naive's L99 at least 2/3 of Ours').",
               f"- \"Our final test accuracy is considerably higher\": Ours' Max Acc is {gap:+.2f} points above "
               f"Naive's (± {margin:.2f}, one combined standard error): "
               f"**{higher}** beyond one standard error."]
    write(results_dir, "fig7", f"Fig. 7: a new domain, {old_dom} -> {new_dom} ({args.dataset})", args, md, csv)
    fig, axes = pyplot().subplots(1, 3, figsize=(14, 4.2))
    rows = [(row, label) for row, label in P.FIG7_ROWS if label in groups]
    for ax, field, what in zip(axes, ("acc", "acc_old", "acc_new"), ("both domains", old_dom, new_dom)):
        if "scratch" in groups and rows:
            draw_curves(ax, groups, rows, "scratch", args, field)
        ax.set_title(f"test accuracy on {what}", fontsize=10)
    fig.suptitle(f"Fig. 7: old data {old_dom}, new data {new_dom} (o: 99%, *: 100% of Scratch's accuracy)",
                 fontsize=10)
    save(fig, os.path.join(results_dir, "fig7.png"))


def report_laptop(runs, args, runs_dir, results_dir):
    """The laptop plan: Table 2a's section (report_sections), each row's final training accuracy, and the
    plateau check: seed 0's scratch model at twice the iterations against seed 0's scratch model."""
    train_accs, best, made_with = {}, {}, set()
    for r in runs:
        d = os.path.join(runs_dir, r.name)
        log = runlog.read_finished(d)
        if log is None:
            continue
        header, _, summary = log
        check_summary(runlog.log_path(d), summary)  # a hand-edited log: one line
        train_accs.setdefault(r.label, []).append(summary.get("train_acc"))
        best[r.label, r.seed] = summary["max_acc"]
        ver = header.get("versions", {})
        made_with.add((ver.get("torch"), ver.get("python"), ver.get("device"), (ver.get("git_commit") or "?")[:7]))
    notes = ["In brackets: the paper's Table 2a, CIFAR-10 (8+2) at full size (50,000 images, 32 px, width 64, "
             "39,100 iterations), not at this scale.", "",
             "Training accuracy of the final model on its own training images (unaugmented), mean ± s.e. over "
             "seeds:", ""]
    for row, label in [("Old model", "old")] + P.TABLE2A_ROWS:
        accs = [a for a in train_accs.get(label, []) if a is not None]
        notes.append(f"- {row}: " + ("{:.2f} ± {:.2f}".format(*S.mean_se(accs)) + f" ({len(accs)} seeds)" if accs
                                      else "(not run)"))
    a1, a2 = best.get(("scratch", 0)), best.get((P.PLATEAU, 0))
    if a1 is not None and a2 is not None:
        verdict = "on the plateau (< 1 point)" if a2 - a1 < 1 else "NOT on the plateau (>= 1 point)"
        notes += ["", f"Plateau check (seed 0, scratch): Max Acc {a1:.2f} at {args.iters} iterations, {a2:.2f} at "
                      f"{2 * args.iters} (schedule stretched): {a2 - a1:+.2f} points, {verdict}."]
    else:
        notes += ["", "Plateau check (seed 0, scratch at twice the iterations): (not run)"]
    if made_with:  # the logs' headers: what a reader needs to rerun them
        notes += ["", "Made with (from the runs' headers): " + "; ".join(
            f"torch {t}, Python {py}, {dev}, code of commit {c}" for t, py, dev, c in sorted(made_with, key=str)) + "."]
    report_sections(runs, args, runs_dir, results_dir, notes + [""])


REPORTS = {"table1": report_table1, "table2a": report_sections, "table2b": report_sections, "fig6": report_fig6,
           "fig7": report_fig7, "appendix": report_sections, "laptop": report_laptop}


# ------------------------------------------------------------------------------------------ figures

def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    runlog.replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    pyplot().close(fig)


def plot_curves(groups, rows, reference, path, title, args):
    """Test accuracy against iterations for rows [(legend, label)], the reference's a_scratch dotted."""
    rows = [(name, lab) for name, lab in rows if lab in groups]
    if reference not in groups or not rows:
        return
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    draw_curves(ax, groups, rows, reference, args)
    ax.set_title(f"{title}\n(o: 99%, *: 100% of {P.paper_name(reference)}'s accuracy, dotted)", fontsize=10)
    save(fig, path)


def draw_curves(ax, groups, rows, reference, args, field="acc"):
    """Onto ax: the seed-averaged `field` (acc, or acc_old / acc_new: one domain's) of each row with a
    standard-error band; for acc the reference's a_scratch dotted and where each curve first reaches 99% (o)
    and 100% (*) of it. The y-axis spans every curve and band in full: nothing is clipped."""
    a_ref = S.reference_accuracy(S.mean_curve(groups[reference], field)[1], args.target)
    lo, hi = a_ref, a_ref
    for name, lab in rows:
        it, acc = S.mean_curve(groups[lab], field)
        per_seed = np.array([[{e["iter"]: e[field] for e in ev}[i] for i in it] for _, ev in groups[lab]])
        se = per_seed.std(0, ddof=1) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else np.zeros(len(it))
        (line,) = ax.plot(it, acc, label=f"{name} (n={len(per_seed)})", lw=1.4)
        ax.fill_between(it, np.array(acc) - se, np.array(acc) + se, color=line.get_color(), alpha=0.2, lw=0)
        for r, marker in ((99, "o"), (100, "*")) if field == "acc" else ():
            hit = S.iterations_to_reach(it, acc, r / 100 * a_ref)
            if hit is not None:
                ax.plot([hit], [acc[it.index(hit)]], marker, color=line.get_color(), ms=8 if r == 100 else 5)
        lo, hi = min(lo, float(np.min(np.array(acc) - se))), max(hi, float(np.max(np.array(acc) + se)))
    if field == "acc":
        ax.axhline(a_ref, color="gray", ls=":", lw=1)
    pad = 0.03 * max(hi - lo, 1)
    ax.set(xlabel=f"training iterations (batches of {args.batch_size})", ylabel="test accuracy (%)",
           ylim=(lo - pad, hi + pad))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
