"""Figs. 11, 14 and 15 of the paper's appendix (plan analysis): why the methods work, drawn from the finished runs'
logs and the old model's checkpoint (analysis.py has the measurements, train.py records them), with
analysis.md / analysis.csv beside the figures.
"""
import os

import numpy as np
import torch

import analysis as A
import runlog
import speedup as S
from sampler import LearningSpeed, unpack_bits

from . import plans as P
from . import report as R

SCRATCH, NAIVE = P.ANALYSIS_LABELS


def events(run_dir, event):
    """The lines of one kind ('eval', 'grad_norms', ...) of a run's log.jsonl."""
    return [e for e in runlog.read_lines(run_dir)[1] if e.get("event") == event]


def mean_over_seeds(curves, field):
    """{iter: mean over seeds of field} on the iterations every seed logged with a value (not None)."""
    per_seed = [{e["iter"]: e[field] for e in c if e.get(field) is not None} for c in curves]
    common = sorted(set.intersection(*map(set, per_seed))) if per_seed else []
    return {i: float(np.mean([p[i] for p in per_seed])) for i in common}


def learning_speed_image(ckpt_path, c=0.2, max_rows=4000):
    """Fig. 11 from an old model's checkpoint: (image bool [m, E] of per-epoch correctness, rows sorted by
    learning speed hardest first and subsampled evenly to at most max_rows, n examples, k = the examples
    above / below each cut-off, learning speeds float [n] in row order), or None without per-epoch bits."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["learning_speed"]
    n = state["seen"].numel()
    bits = unpack_bits(state["correct_by_epoch"], n)  # [E, n]
    if bits.shape[0] == 0:
        return None
    ls = LearningSpeed(n)
    ls.load_state_dict(state)
    speed = ls.value()  # the values, in float32, that easy_hard_weights ranks
    order, k = A.learning_speed_rows(speed, c)
    rows = np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(int))
    return bits[:, order].T[torch.from_numpy(rows)].numpy(), n, k, speed[order].numpy()


def fig11(old_dirs, args, runs_dir, results_dir):
    """Fig. 11 (App. A.5): the first old model's correctness at every epoch, rows sorted by learning speed."""
    md = ["## Fig. 11: how fast the old model learns each example (App. A.5)", ""]
    ckpt = next((f for f in (os.path.join(d, "ckpt.pt") for d in old_dirs) if os.path.isfile(f)), None)
    got = learning_speed_image(ckpt) if ckpt else None
    if got is None:
        return md + ["(not drawn: no finished old model with per-epoch correctness, `--learning-speed exact`)",
                     ""], []
    from matplotlib.colors import ListedColormap

    img, n, k, speed = got
    fig, ax = R.pyplot().subplots(figsize=(6.4, 5.2))
    ax.imshow(img, aspect="auto", interpolation="nearest", cmap=ListedColormap(["#d62728", "#2ca02c"]),
              vmin=0, vmax=1, extent=(0.5, img.shape[1] + 0.5, n, 0))  # y: rank among all n examples
    for y, what in ((k, "10% hardest (above)"), (n - k, "10% easiest (below)")):
        ax.axhline(y, color="k", lw=1.2, ls="--")
        ax.text(img.shape[1] + 0.5, y, f" {what}", va="center", fontsize=7)
    ax.set(xlabel="epoch of the old model", ylabel=f"training example, by learning speed ({len(img)} of {n} rows)")
    ax.set_title(f"Fig. 11: per-epoch correctness (green) of the old model, {args.split}", fontsize=10)
    R.save(fig, os.path.join(results_dir, "fig11_learning_speed.png"))
    hard, easy = (speed[k - 1], speed[n - k]) if k else (None, None)
    md += [f"From `{os.path.relpath(ckpt, runs_dir)}`: {n} old training examples x {img.shape[1]} epochs, "
           f"rows sorted by learning speed (Eq. 6) as easy/hard sampling ranks them; the lines cut off the "
           f"k = {k} hardest (top) and {k} easiest (bottom). Hardest cut-off: learning speed <= "
           f"{hard if k else float('nan'):.3f}; easiest cut-off: >= {easy if k else float('nan'):.3f}; never "
           f"learned (0): {np.mean(speed == 0):.1%}; correct at every epoch (1): {np.mean(speed == 1):.1%}; "
           f"mean {speed.mean():.3f}.", ""]
    csv = [S.csv_line(["fig11", "old", "", q, v]) for q, v in (
        ("n", n), ("epochs", img.shape[1]), ("k", k), ("hard_cutoff", hard), ("easy_cutoff", easy),
        ("mean_learning_speed", float(speed.mean())))]
    return md, csv


def fig14(naive_dirs, results_dir):
    """Fig. 14 (App. A.7): per-example gradient norms of old and new examples during the naive run."""
    md = ["## Fig. 14: per-example gradient norms during the naive run (App. A.7)", ""]
    probes = [events(d, "grad_norms") for d in naive_dirs]
    means = {g: mean_over_seeds(probes, g) for g in ("old", "new")}
    its = sorted(set(means["old"]) & set(means["new"]))
    if not its:
        return md + [f"(not drawn: no finished `{NAIVE}` run)", ""], []
    fig, ax = R.pyplot().subplots(figsize=(6.4, 4.2))
    first, k_old = probes[0], probes[0][0]["num_old_classes"]
    for j in range(len(first[0]["per_class"])):  # the class level, first seed: faint lines
        pts = [(e["iter"], e["per_class"][j]) for e in first if e["per_class"][j] is not None]
        if pts:
            ax.plot(*zip(*pts), color="C0" if j < k_old else "C3", lw=0.5, alpha=0.25)
    for g, color in (("old", "C0"), ("new", "C3")):
        ax.plot(its, [means[g][i] for i in its], "o-", color=color, lw=1.6, ms=3,
                label=f"{g} examples (mean of {first[0]['n_' + g]}, n={len(probes)} seeds)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set(xlabel="training iteration of the naive run", ylabel="per-example gradient norm")
    ax.set_title("Fig. 14: gradient norms of old and new data (faint: per class, seed 0)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    R.save(fig, os.path.join(results_dir, "fig14_grad_norms.png"))
    md += [f"Mean over {len(probes)} seed(s) of the mean per-example gradient norm (all parameters, BatchNorm in "
           f"eval mode) of a fixed probe of {first[0]['n_old']} old and {first[0]['n_new']} new training "
           "examples.", "", "| iteration | old | new | new / old |", "|---|---|---|---|"]
    csv = []
    for i in its:
        o, w = means["old"][i], means["new"][i]
        md.append(f"| {i} | {o:.4f} | {w:.4f} | {w / o if o else float('nan'):.2f} |")
        csv += [S.csv_line(["fig14", NAIVE, i, g, means[g][i]]) for g in ("old", "new")]
    return md + [""], csv


def fig15(done, args, results_dir):
    """Fig. 15 (App. A.8): training and test loss of the naive and the scratch run, means over seeds."""
    md = ["## Fig. 15: training and test loss, naive and scratch (App. A.8)", "",
          "| run | seeds | min test loss (iteration) | first within 5% of it | final test loss | final training loss |",
          "|---|---|---|---|---|---|"]
    csv = []
    fig, ax = R.pyplot().subplots(figsize=(6.4, 4.2))
    drawn = False
    for lab, name, color in ((NAIVE, "Naive", "C0"), (SCRATCH, "Scratch", "C1")):
        curves = [events(d, "eval") for d in done[lab]]
        test, train = mean_over_seeds(curves, "test_loss"), mean_over_seeds(curves, "loss")
        for q, curve, ls in (("test_loss", test, "-"), ("train_loss", train, "--")):
            if curve:
                ax.plot(list(curve), list(curve.values()), ls, color=color, lw=1.4,
                        label=f"{name}: {q.replace('_', ' ')} (n={len(curves)})")
                drawn = True
            csv += [S.csv_line(["fig15", lab, i, q, v]) for i, v in curve.items()]
        if not test:
            md.append(f"| {name} | {len(curves)} | (no test loss logged) | | | |")
            continue
        best = min(test, key=lambda i: (test[i], i))
        near = min(i for i, v in test.items() if v <= 1.05 * test[best])
        last = max(test)
        md.append(f"| {name} | {len(curves)} | {test[best]:.4f} ({best}) | {near} | {test[last]:.4f} | "
                  f"{train[max(train)] if train else float('nan'):.4f} |")
    if drawn:
        ax.set(xlabel=f"training iterations (batches of {args.batch_size})", ylabel="cross-entropy loss")
        ax.set_title("Fig. 15: training (dashed) and test (solid) loss, naive and scratch", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        R.save(fig, os.path.join(results_dir, "fig15_losses.png"))
    else:
        R.pyplot().close(fig)
    md += ["", "Training loss: the mean over each evaluation interval; test loss: the mean cross-entropy over the "
           "test set of all classes seen, at each evaluation; both means over seeds."]
    return md, csv


def report_analysis(runs, args, runs_dir, results_dir):
    """Figs. 11 (the first seed's old model), 14 (the naive runs) and 15 (the naive and scratch runs), with
    analysis.md / analysis.csv."""
    done = {lab: R.finished([r for r in runs if r.label == lab], runs_dir) for lab in ("old", NAIVE, SCRATCH)}
    md, csv = [], ["figure,label,iter,quantity,value"]
    for part_md, part_csv in (fig11(done["old"], args, runs_dir, results_dir), fig14(done[NAIVE], results_dir),
                              fig15(done, args, results_dir)):
        md, csv = md + part_md, csv + part_csv
    R.write(results_dir, "analysis", f"Figs. 11, 14, 15: why the methods work, {args.dataset} {args.split}", args,
            md, csv, speedups=False)
