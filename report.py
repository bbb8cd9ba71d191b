"""Tables and figures of a plan (plans.py), made from the finished runs' logs only, with the paper's
published values in brackets beside ours.

Max Acc is the mean ± standard error over seeds; L99 / L100 (Eq. 2) are computed on the seed-averaged curves
(speedup.row_stats), also in measured training seconds. Figures: test accuracy against iterations, mean over
seeds with a standard-error band, where each curve first reaches 99% (o) and 100% (*) of the reference marked.
"""
import math
import os

import plans as P
import speedup as S

STATS = ["n", "max_acc", "max_acc_se", "L99", "L100", "L99_seconds", "L100_seconds"]
PAPER = ["paper_max_acc", "paper_L99", "paper_L100"]


def collect(runs, runs_dir):
    """{label: [(header, evals), ...]} of the finished runs among `runs`."""
    dirs = [os.path.join(runs_dir, r.name) for r in runs]
    return S.group_runs([d for d in dirs if S.is_finished(d)])


def cells(st, paper=None):
    """Markdown cells Max Acc, L99, L100 (with the paper's value in brackets when given)."""
    if st is None:
        return ["(not run)"] * 3
    ours = [f"{st['max_acc']:.2f} ± {st['max_acc_se']:.2f}", S.fmt_speedup(st["L99"]), S.fmt_speedup(st["L100"])]
    if paper is None:
        return ours
    return [f"{ours[0]} ({paper[0]:.2f})"] + [f"{o} ({S.fmt_speedup(p)})" for o, p in zip(ours[1:], paper[1:])]


def csv_values(xs):
    return ",".join("" if x is None else str(x) if isinstance(x, (str, int)) else f"{x:.6g}" for x in xs)


def csv_line(keys, st, paper):
    """CSV row: the row's keys, our STATS, the paper's (Max Acc, L99, L100)."""
    return csv_values(list(keys) + [st[k] if st else None for k in STATS] + list(paper or [None] * 3))


def write(results_dir, name, title, args, md, csv):
    """Markdown (a header saying how it was made, then md) and CSV, atomically; the Markdown is printed."""
    md = [f"# {title}", "",
          f"{args.dataset}, ResNet-18 (width {args.width}), batch {args.batch_size}, {args.iters} iterations, "
          f"{args.seeds} seed(s); command: `./reproduce.sh {' '.join(args.argv)}`", "",
          "Ours: Max Acc is the mean ± standard error over seeds; L99 / L100 (Eq. 2) are computed on the "
          "seed-averaged curves; the paper's value is in brackets; '/' = the target accuracy was not reached. "
          "'seconds': the same ratios in measured training seconds instead of iterations.", ""] + md
    os.makedirs(results_dir, exist_ok=True)
    S.write_atomic(os.path.join(results_dir, f"{name}.md"), "\n".join(md) + "\n")
    S.write_atomic(os.path.join(results_dir, f"{name}.csv"), "\n".join(csv) + "\n")
    print("\n".join(md), flush=True)


def report_table1(runs, args, runs_dir, results_dir):
    groups = collect(runs, runs_dir)
    mark = lambda on: "✓" if on else ""  # noqa: E731
    md = ["| Initialization | Regularization | Data | Scheduler | Continuous Max Acc | L99 | L100 "
          "| Scratch Max Acc | L99 | L100 | L100 (seconds) cont. / scratch |", "|" + "---|" * 11]
    csv = [",".join(["init", "reg", "data", "scheduler", "column", "label"] + STATS + PAPER)]
    for key, paper in P.TABLE1:
        row, secs = [mark(key[0]), mark(key[1]), mark(key[2]), f"x{key[3]:g}" if key[3] != 1 else ""], []
        for c, column in enumerate(("continuous", "scratch")):
            label = P.row_label(column, *key)
            st = S.row_stats(groups, label, "scratch")
            row += cells(st, paper[3 * c: 3 * c + 3])
            secs.append(S.fmt_speedup(st["L100_seconds"]) if st else "-")
            csv.append(csv_line([*key[:3], key[3], column, label], st, paper[3 * c: 3 * c + 3]))
        md.append("| " + " | ".join(row + [" / ".join(secs)]) + " |")
    write(results_dir, "table1", f"Table 1: {args.dataset} {args.split}", args, md, csv)
    for fname, title, labels in [
        ("fig1_scratch_naive_ours", "Fig. 1: scratch, naive, all four methods",
         ["scratch", "continuous", "continuous+init+reg+data+x0.25"]),
        ("fig2_initialization", "Fig. 2: initialization", ["scratch", "continuous", "continuous+init"]),
        ("fig3_objective", "Fig. 3: objective", ["scratch", "scratch+reg", "continuous", "continuous+reg"]),
        ("fig4_data", "Fig. 4: batch composition", ["scratch", "continuous", "continuous+data"]),
        ("fig5_scheduler", "Fig. 5: scheduler", ["scratch", "continuous", "continuous+x0.25", "scratch+x0.25"]),
    ]:
        plot_curves(groups, [(lab, lab) for lab in labels], "scratch", os.path.join(results_dir, f"{fname}.png"),
                    title)


def report_sections(runs, args, runs_dir, results_dir):
    """table2a, table2b, appendix: a sub-table and a figure per Section, and every run's wall time."""
    name, sections = P.SECTIONS[args.plan](args)
    md, csv, walls = [], [",".join(["section", "row", "label"] + STATS + PAPER)], []
    for sec in sections:
        groups = collect([r for r in runs if r.split == sec.split], runs_dir)
        md += [f"## {sec.title}", "", "| Row | Max Acc | L99 | L100 | L99 (seconds) | L100 (seconds) |",
               "|" + "---|" * 6]
        for row, label, paper in sec.rows:
            st = S.row_stats(groups, label, sec.reference)
            secs = [S.fmt_speedup(st[f"L{r}_seconds"]) if st else "-" for r in (99, 100)]
            md.append("| " + " | ".join([row] + cells(st, paper) + secs) + " |")
            csv.append(csv_line([sec.key, row, label], st, paper))
        md.append("")
        fig = f"{name}_{sec.key.replace('+', '-')}.png" if len(sections) > 1 else f"{name}.png"
        legend = [(row, lab) for row, lab, _ in sec.rows]
        if sec.reference not in [lab for _, lab in legend]:
            legend.insert(0, (sec.reference, sec.reference))
        plot_curves(groups, legend, sec.reference, os.path.join(results_dir, fig), sec.title)
        walls += [f"- {sec.split} {label}: " + ", ".join(f"seed {h['config']['seed']}: {ev[-1]['wall']:.0f} s"
                                                        for h, ev in rs) for label, rs in sorted(groups.items())]
    md += ["Wall time of every run (training and evaluation):", ""] + sorted(set(walls))
    titles = {"table2b": "Table 2b: ratios of old and new classes", "appendix": "Appendix A.3-A.6: sweeps"}
    write(results_dir, name, titles.get(name, sections[0].title), args, md, csv)


def report_fig6(runs, args, runs_dir, results_dir):
    """Per task: scratch and chain Max Acc, L100 of the chain against that task's scratch model, and the
    cumulative iterations of the chain (each task stopped at its L100 point, or run in full when it never gets
    there) against the sum of the scratch runs (each stopped where it reaches its own best)."""
    plt = pyplot()
    md = ["| Task | Classes | Scratch Max Acc | Chain Max Acc | L100 | chain iterations to L100 (cumulative) "
          "| scratch iterations to its max (cumulative) |", "|" + "---|" * 7]
    csv = ["task,classes,scratch_max_acc,chain_max_acc,L100,chain_iters,chain_cumulative,scratch_iters,"
           "scratch_cumulative"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    cum_chain = cum_scratch = offset = 0
    for t in sorted({r.task for r in runs if r.task > 0}):
        rs = [r for r in runs if r.task == t]
        groups = collect(rs, runs_dir)
        chain = next(r.label for r in rs if r.label != "scratch")
        st, sc = S.row_stats(groups, chain, "scratch"), S.row_stats(groups, "scratch", "scratch")
        if st is None:
            md.append(f"| {t} | | (not run) | | | | |")
            continue
        header = groups["scratch"][0][0]
        ref_it, ref_acc = S.mean_curve(groups["scratch"])
        it, acc = S.mean_curve(groups[chain])
        hit = S.iterations_to_reach(it, acc, max(ref_acc))
        chain_cost = it[-1] if hit is None else hit
        scratch_cost = S.iterations_to_reach(ref_it, ref_acc, max(ref_acc))
        cum_chain, cum_scratch = cum_chain + chain_cost, cum_scratch + scratch_cost
        md.append(f"| {t} | {header['num_classes']} | {cells(sc)[0]} | {cells(st)[0]} | {S.fmt_speedup(st['L100'])} "
                  f"| {chain_cost} ({cum_chain}) | {scratch_cost} ({cum_scratch}) |")
        csv.append(csv_values([t, header["num_classes"], sc["max_acc"], st["max_acc"], st["L100"], chain_cost,
                               cum_chain, scratch_cost, cum_scratch]))
        frac = header["num_test"] / header["num_test_all"]  # on the full test set unseen classes are errors
        first = offset == 0  # label each kind of mark once
        ax.plot([offset + i for i in it], [a * frac for a in acc], color="C0", lw=1.2,
                label="continuous (ours)" if first else None)
        ax.plot([offset + i for i in ref_it], [a * frac for a in ref_acc], color="C1", lw=0.8, alpha=0.7,
                label="scratch on all data so far" if first else None)
        ax.fill_between([offset, offset + it[-1]], [100 * frac] * 2, [100] * 2, color="gray", alpha=0.15, lw=0,
                        label="not reachable (unseen classes)" if first else None)
        if hit is not None:
            ax.plot([offset + hit], [acc[it.index(hit)] * frac], "o", color="gold", mec="k", ms=6,
                    label="L100 point" if first else None)
        offset += it[-1]
    md += ["", f"Chain total: {cum_chain} iterations; scratch runs total: {cum_scratch} iterations "
           f"(scratch / chain = {S.fmt_speedup(S.ratio(cum_scratch, cum_chain))})."]
    write(results_dir, "fig6", f"Fig. 6: {args.dataset} {args.split}, a chain with all four methods (schedule "
          f"x{args.chain_scale:g}) against a scratch model per task", args, md, csv)
    ax.set(xlabel="cumulative iterations (task after task)", ylabel="test accuracy on all classes (%)", ylim=(0, 100))
    ax.set_title(f"Fig. 6: {args.split}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, os.path.join(results_dir, "fig6.png"))


REPORTS = {"table1": report_table1, "table2a": report_sections, "table2b": report_sections, "fig6": report_fig6,
           "appendix": report_sections}


# ------------------------------------------------------------------------------------------ figures

def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    pyplot().close(fig)
    os.replace(tmp, path)


def plot_curves(groups, rows, reference, path, title):
    """Test accuracy against iterations for rows [(legend, label)] with the reference's maximum dotted."""
    import numpy as np

    rows = [(name, lab) for name, lab in rows if lab in groups]
    if reference not in groups or not rows:
        return
    a_ref = max(S.mean_curve(groups[reference])[1])
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
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
    ax.set(xlabel="iteration", ylabel="test accuracy (%)",
           ylim=(max(0, lo - 5), min(100, a_ref + 0.15 * max(a_ref - lo, 1) + 1)))
    ax.set_title(f"{title}\n(o: 99%, *: 100% of {reference}'s max accuracy, dotted)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, path)
