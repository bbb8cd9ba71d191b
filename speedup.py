"""The paper's speed-up metric (Sec. 2, Eq. 1 and Eq. 2) and a table of runs from their logs.

    s(f, a) = min { i : accuracy of f after i iterations >= a }                                   (Eq. 1)
    L_r(f, f_scratch) = s(f_scratch, a_scratch) / s(f, r/100 * a_scratch)                          (Eq. 2)

The paper calls a_scratch the scratch model's "final accuracy"; its tables report Max Acc. We take a_scratch =
the maximum (target="max", the default) or the last logged accuracy (target="final"), so s(f_scratch,
a_scratch) is the iteration at which the reference first reaches it. L_100 = 2 means half the iterations to
match the reference; L_99 asks for 99% of it. Accuracy is only known at logged evaluations, so s is the first
logged iteration at or above the target.

With seeds (the paper reports averages of five runs) curves are averaged over seeds first, and both a_scratch
and every row's Max Acc are the maximum of the seed-averaged curve: one statistic, so a row reaches L_100
exactly when its Max Acc is at least the reference's. Its standard error is that of the seeds' accuracies
at the iteration of the maximum. A verdict ('/' or a number) that would flip if the row's Max Acc moved by
one combined standard error is marked fragile. Beside it, L_r per seed (each seed's curves against the same
seed's reference: the other reading of "the results shown are the averages of these experiments") as mean ±
standard error over the seeds that reach the target, with their count. A row and its reference are compared on
the seeds both have (a failed run must not compare 4 seeds with 5).

The same ratios in measured training seconds (the logs' train_seconds at those iterations) show whether the
savings survive in wall-clock time when some methods cost more per iteration.

Standard library and numpy only: copy this file alone to use it. A table takes runs as {label: [(header,
evaluations), ...]}, as repro/runs.py's group_runs reads them from train.py's log.jsonl files;
`python -m repro.table RUNS... --reference scratch` prints one from run folders.
"""
import math

import numpy as np


def iterations_to_reach(iters, accs, target):
    """Eq. 1: the first logged iteration whose accuracy is >= target, or None if never reached."""
    for i, a in zip(iters, accs):
        if a is not None and a >= target:
            return i
    return None


def reference_accuracy(accs, target="max"):
    """a_scratch of Eq. 2: the maximum of a curve, or its last value (the paper's 'final accuracy')."""
    accs = [a for a in accs if a is not None]
    if target not in ("max", "final"):
        raise ValueError(f"unknown target '{target}' (max or final)")
    return max(accs) if target == "max" else accs[-1]


def reach(ref_iters, ref_accs, iters, accs, r=100, target="max"):
    """Eq. 2's two iteration counts: (s(f_scratch, a_scratch), s(f, r/100 * a_scratch)); None where not reached."""
    a_ref = reference_accuracy(ref_accs, target)
    return iterations_to_reach(ref_iters, ref_accs, a_ref), iterations_to_reach(iters, accs, r / 100 * a_ref)


def speedup(ref_iters, ref_accs, iters, accs, r=100, target="max"):
    """Eq. 2: L_r of a run (iters, accs) against the reference run; None where the target is not reached.

    A run at the target before any training (iteration 0) has an infinite speed-up (1 if the reference's best
    is its starting point too)."""
    return ratio(*reach(ref_iters, ref_accs, iters, accs, r, target))


def ratio(num, den):
    if den is None:
        return None
    if den == 0:
        return 1.0 if num == 0 else math.inf
    return num / den


def speedup_cost(ref_iters, ref_accs, ref_costs, iters, accs, costs, r=100, target="max"):
    """Eq. 2 with each side's iteration count replaced by its logged cost (e.g. cumulative training seconds) at
    that iteration."""
    num, den = reach(ref_iters, ref_accs, iters, accs, r, target)
    if den is None:
        return None
    return ratio(ref_costs[list(ref_iters).index(num)], costs[list(iters).index(den)])


def mean_se(values):
    """Mean and standard error (sample std / sqrt(n); 0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)


def fmt_speedup(x, fragile=False):
    """The paper's notation: 'x1.83', '/' where the target is not reached; '†' marks a fragile verdict."""
    return ("/" if x is None else ("x inf" if math.isinf(x) else f"x{x:.2f}")) + ("†" if fragile else "")


# --------------------------------------------- a table of rows over seeds: groups of (header, evals) per label

def mean_curve(runs, field="acc"):
    """Seed-averaged curve on the iterations every run logged: (iters, mean values)."""
    common = sorted(set.intersection(*[{e["iter"] for e in evals} for _, evals in runs]))
    per_run = [{e["iter"]: e[field] for e in evals} for _, evals in runs]
    return common, [float(np.mean([r[i] for r in per_run])) for i in common]


def max_of_mean(runs):
    """(Max Acc, its standard error, its iteration): the maximum of the seed-averaged curve, and the standard
    error of the seeds' accuracies at that iteration."""
    it, acc = mean_curve(runs)
    k = int(np.argmax(acc))
    _, se = mean_se([{e["iter"]: e["acc"] for e in evals}[it[k]] for _, evals in runs])
    return acc[k], se, it[k]


def seed_key(header):
    """What makes two runs of different rows the same seed: the seed of init and data order, and the class
    order's."""
    config = header.get("config", {})
    return config.get("seed"), config.get("split_seed")


def paired(groups, label, reference):
    """(the row's runs, the reference's runs, how many runs of either were left out): only the seeds both have,
    in the same order, so that a row is compared with the reference on the same seeds (a failed run of one
    row must not compare 4 seeds with 5)."""
    ref = {seed_key(h): (h, ev) for h, ev in groups[reference]}
    cur = {seed_key(h): (h, ev) for h, ev in groups[label]}
    both = [k for k in cur if k in ref]
    return [cur[k] for k in both], [ref[k] for k in both], len(cur) + len(ref) - 2 * len(both)


def per_seed_speedups(cur, ref, r, target="max"):
    """Eq. 2 on each seed's own curves against the same seed's reference (cur, ref: paired lists of runs):
    (mean, standard error, how many seeds reached r% of their a_scratch). A seed that never reaches it has no
    L_r and is left out of the mean (the count says how many did); (None, None, 0) if none did."""
    vals = [speedup([e["iter"] for e in rev], [e["acc"] for e in rev], [e["iter"] for e in ev],
                    [e["acc"] for e in ev], r, target) for (_, ev), (_, rev) in zip(cur, ref)]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, 0
    if any(math.isinf(v) for v in vals):
        return math.inf, None, len(vals)
    return (*mean_se(vals), len(vals))


def row_stats(groups, label, reference, rs=(99, 100), target="max"):
    """One row: n seeds, Max Acc (maximum of the seed-averaged curve) +- s.e., and L_r on the seed-averaged
    curves against the reference label, in iterations and in training seconds, each with a flag `fragile`
    when reaching r% of a_scratch or not is within one combined standard error. Beside it, L_r of each seed
    against the same seed's reference, as mean +- s.e. (L{r}_seeds, per_seed_speedups). Both sides are taken
    over the seeds both have (paired); `left_out` counts the runs of either side without a partner.
    None if either has no runs in common."""
    if label not in groups or reference not in groups:
        return None
    cur, ref, left_out = paired(groups, label, reference)
    if not cur:
        return None
    ref_it, ref_acc = mean_curve(ref)
    _, ref_sec = mean_curve(ref, "train_seconds")
    it, acc = mean_curve(cur)
    _, sec = mean_curve(cur, "train_seconds")
    m, se, m_it = max_of_mean(cur)
    _, ref_se, _ = max_of_mean(ref)
    a_ref = reference_accuracy(ref_acc, target)
    row = {"label": label, "n": len(cur), "left_out": left_out, "max_acc": m, "max_acc_se": se,
           "max_acc_iter": m_it, "final_acc": acc[-1], "a_scratch": a_ref}
    for r in rs:
        row[f"L{r}_seeds"], row[f"L{r}_seeds_se"], row[f"L{r}_seeds_reached"] = per_seed_speedups(cur, ref, r, target)
        row[f"L{r}"] = speedup(ref_it, ref_acc, it, acc, r, target)
        row[f"L{r}_seconds"] = speedup_cost(ref_it, ref_acc, ref_sec, it, acc, sec, r, target)
        margin = math.hypot(se, r / 100 * ref_se)
        row[f"L{r}_fragile"] = label != reference and abs(m - r / 100 * a_ref) <= margin and margin > 0
    return row


FRAGILE_NOTE = "\n† within one standard error of the target: the verdict (reached or '/') could flip.\n"
SEEDS_NOTE = ("L99 / L100: Eq. 2 on the seed-averaged curves. 'per seed': Eq. 2 on each seed's curve against the "
              "same seed's reference, mean ± standard error over the seeds that reach the target; (k/n) says "
              "how many of the n seeds did when not all ('/' if none). Rows and reference are compared on the "
              "seeds both have; ‡ marks a row whose seeds differed (the runs without a partner are left out).\n")


def fmt_seeds(row, r):
    """'x1.50 ± 0.04' (per-seed L_r, mean ± s.e.), '(3/5)' appended when not every seed reached the target."""
    mean, se, k = row[f"L{r}_seeds"], row[f"L{r}_seeds_se"], row[f"L{r}_seeds_reached"]
    if mean is None:
        return "/"
    text = fmt_speedup(mean) + ("" if se is None else f" ± {se:.2f}")
    return text + (f" ({k}/{row['n']})" if k < row["n"] else "")


def fmt_max_acc(row):
    return f"{row['max_acc']:.2f} ± {row['max_acc_se']:.2f}" + ("‡" if row["left_out"] else "")


def to_markdown(rows, rs=(99, 100)):
    head = ["run", "n", "Max Acc"] + [f"L{r}" for r in rs] + [f"L{r} per seed" for r in rs] + \
        [f"L{r} (seconds)" for r in rs]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], str(row["n"]), fmt_max_acc(row)]
        cells += [fmt_speedup(row[f"L{r}"], row[f"L{r}_fragile"]) for r in rs]
        cells += [fmt_seeds(row, r) for r in rs]
        cells += [fmt_speedup(row[f"L{r}_seconds"], row[f"L{r}_fragile"]) for r in rs]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def csv_line(values):
    """One CSV line: strings quoted, '' for None, integers and booleans (1/0) in full, other numbers to 6
    significant digits."""
    cell = lambda v: ('"%s"' % v.replace('"', '""') if isinstance(v, str) else "" if v is None  # noqa: E731
                      else str(int(v)) if isinstance(v, int) else f"{v:.6g}")
    return ",".join(map(cell, values))


def to_csv(rows, rs=(99, 100)):
    cols = ["label", "n", "left_out", "max_acc", "max_acc_se"] + \
        [f"L{r}{kind}" for kind in ("", "_seconds", "_fragile", "_seeds", "_seeds_se", "_seeds_reached") for r in rs]
    return "\n".join([",".join(cols)] + [csv_line(row[c] for c in cols) for row in rows]) + "\n"
