"""Figs. 11, 14, 15 (App. A.5, A.7, A.8): the logged test loss and gradient norms recomputed independently from
the saved models, per-example norms against plain autograd, Fig. 11's rows against easy_hard_weights, and the
analysis plan end to end on a tiny synthetic folder, its summary checked against its logs."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import analysis as A
import data as D
from repro import reproduce
import train
from conftest import write_folder
from resnet import resnet18
from sampler import LearningSpeed, easy_hard_weights, pack_bits, unpack_bits

TINY = ["--dataset", "folder", "--split", "4+2", "--width", "8", "--batch-size", "16", "--eval-every", "3",
        "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An old model, then the naive run with and without --grad-norms (same seed): 6 classes, 4 old."""
    root = tmp_path_factory.mktemp("analysis")
    write_folder(root / "data", num_classes=6, n_train=10, n_test=4)

    def run(name, *extra, iters=12):
        train.main(train.build_parser().parse_args(TINY + ["--data-dir", str(root / "data"), "--iters", str(iters),
                                                           "--out", str(root / name), *extra]))
        return root / name

    old = run("old", "--task", "0", iters=15)
    naive = ["--task", "1", "--init", "old", "--old-ckpt", str(old / "ckpt.pt"), "--learning-speed", "off"]
    return {"root": root, "old": old, "probed": run("probed", *naive, "--grad-norms"), "plain": run("plain", *naive)}


def lines(run_dir, event=None):
    rows = [json.loads(x) for x in open(run_dir / "log.jsonl")]
    return [r for r in rows if event is None or r["event"] == event]


def final_model_and_data(run_dir, root):
    """The saved final model (eval mode) and the task's data, normalised as train.py does, built independently."""
    c = torch.load(run_dir / "ckpt.pt", weights_only=True)
    model = resnet18(c["num_classes"], width=8)
    model.load_state_dict(c["model"])
    trainset, testset, _ = D.load_dataset("folder", str(root / "data"))
    d = D.task_data(trainset, testset, c["groups"], c["class_order"], c["task"])
    mean, std = D.channel_stats(trainset[0])
    norm = lambda x: (x.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)  # noqa: E731
    return model.eval(), d, norm


def test_test_loss_is_the_final_models_mean_cross_entropy(runs):
    model, d, norm = final_model_and_data(runs["probed"], runs["root"])
    with torch.no_grad():
        want = F.cross_entropy(model(norm(d.test_x)), d.test_y).item()
    evals = lines(runs["probed"], "eval")
    assert [e["iter"] for e in evals] == [0, 3, 6, 9, 12]
    assert evals[-1]["test_loss"] == pytest.approx(want, rel=1e-5)
    assert all(e["test_loss"] > 0 and math.isfinite(e["test_loss"]) for e in evals)
    # it moves with training (a constant would pass the check above only by luck)
    assert len({round(e["test_loss"], 6) for e in evals}) > 2


def test_probe_changes_nothing_of_the_training(runs):
    """--grad-norms observes only: the same evaluations, losses and final weights as the run without it."""
    keys = ("iter", "acc", "acc_old", "acc_new", "loss", "test_loss", "lr")
    probed, plain = lines(runs["probed"], "eval"), lines(runs["plain"], "eval")
    assert [[e[k] for k in keys] for e in probed] == [[e[k] for k in keys] for e in plain]
    a, b = (torch.load(runs[r] / "ckpt.pt", weights_only=True)["model"] for r in ("probed", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not lines(runs["plain"], "grad_norms")
    # a method setting it is not: both runs are the same group, as seeds of one row would be
    assert lines(runs["probed"])[0]["group"] == lines(runs["plain"])[0]["group"]


def test_logged_grad_norms_are_the_final_models_per_example_norms(runs):
    g = lines(runs["probed"], "grad_norms")
    assert [e["iter"] for e in g] == [0, 1, 2, 5, 10, 12] == A.probe_iterations(12)
    assert all(e["seconds"] > 0 for e in g)  # timed (and kept out of train_seconds by step.timed_eval)
    last = g[-1]
    model, d, norm = final_model_and_data(runs["probed"], runs["root"])
    # the probe: every old (40 < 256) and every new (20) training example, old first
    idx = A.probe_set(d.is_old)
    assert last["n_old"] == 40 and last["n_new"] == 20 and len(idx) == 60 and d.is_old[idx[:40]].all()
    norms = []
    for j in idx.tolist():  # one example at a time, plain autograd, BatchNorm in eval mode
        model.zero_grad()
        F.cross_entropy(model(norm(d.x[j:j + 1])), d.y[j:j + 1]).backward()
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters())))
    norms = np.array(norms)
    assert last["old"] == pytest.approx(norms[:40].mean(), rel=1e-4)
    assert last["new"] == pytest.approx(norms[40:].mean(), rel=1e-4)
    y = d.y[idx].numpy()
    assert last["per_class"] == pytest.approx([norms[y == k].mean() for k in range(6)], rel=1e-4)
    assert last["num_old_classes"] == 4 and g[0]["old"] != last["old"]


def test_per_example_norms_match_plain_autograd():
    torch.manual_seed(0)
    model = resnet18(5, width=4)
    model.train()(torch.randn(8, 3, 16, 16))  # running statistics away from their init
    model.eval()
    x, y = torch.randn(5, 3, 16, 16), torch.tensor([0, 4, 2, 2, 1])
    want = []
    for j in range(5):
        model.zero_grad()
        F.cross_entropy(model(x[j:j + 1]), y[j:j + 1]).backward()
        want.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = A.per_example_grad_norms(model, x, y, chunk_size=2)
    assert got.shape == (5,) and torch.allclose(got, torch.stack(want), rtol=1e-4)
    # the model is read only: its .grad, weights and BatchNorm statistics are as they were
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # Fig. 14's record: the first two examples old; class 3 has no example
    w = [float(v) for v in want]
    rec = A.grad_norm_summary(model, x, y, 2, 5)
    assert rec["n_old"] == 2 and rec["n_new"] == 3 and rec["per_class"][3] is None
    assert rec["old"] == pytest.approx((w[0] + w[1]) / 2, rel=1e-4)
    assert rec["new"] == pytest.approx((w[2] + w[3] + w[4]) / 3, rel=1e-4)
    assert rec["per_class"][2] == pytest.approx((w[2] + w[3]) / 2, rel=1e-4)
    assert [rec["per_class"][k] for k in (0, 1, 4)] == pytest.approx([w[0], w[4], w[1]], rel=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        A.per_example_grad_norms(model.train(), x, y)


def test_probe_set_and_iterations():
    is_old = torch.arange(1000) < 700
    a, b = A.probe_set(is_old), A.probe_set(is_old)
    assert torch.equal(a, b) and len(a) == 512 and len(set(a.tolist())) == 512  # fixed seed, no repeats
    assert is_old[a[:256]].all() and not is_old[a[256:]].any()
    assert not torch.equal(a, A.probe_set(is_old, seed=1))
    assert A.probe_iterations(39100) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000,
                                         39100]
    assert A.probe_iterations(1) == [0, 1] and A.probe_iterations(20) == [0, 1, 2, 5, 10, 20]


def test_fig11_rows_and_cutoffs_are_easy_hard_samplings():
    """The rows above the top cut-off and below the bottom one are exactly the examples that easy_hard_weights
    down-weights, with its tie-breaking (learning speeds of 7 epochs tie a lot)."""
    g = torch.Generator().manual_seed(3)
    bits = torch.rand(7, 503, generator=g) < torch.rand(503, generator=g)  # [E, n], per-example difficulty
    ls = LearningSpeed(503)
    ls.load_state_dict({"seen": torch.full((503,), 7.0), "correct": bits.sum(0).float(),
                        "correct_by_epoch": pack_bits(bits)})
    speed = ls.value()
    assert len(set(speed.tolist())) == 8  # 0/7 .. 7/7: many ties
    ranked = sorted(range(503), key=lambda j: (float(speed[j]), j))  # written again: by speed, then index
    for c in (0.2, 0.4):
        order, k = A.learning_speed_rows(speed, c)
        assert k == int(c / 2 * 503) and order.tolist() == ranked  # hardest (top row) first
        w = easy_hard_weights(speed, torch.ones(503, dtype=torch.bool), c, r=0.1)
        assert set(order[:k].tolist()) | set(order[-k:].tolist()) == set((w == 0.1).nonzero().squeeze(1).tolist())
        assert (w[order[k:-k]] == 1).all()
    with pytest.raises(ValueError, match="missing"):
        A.learning_speed_rows(torch.tensor([0.5, float("nan")]))


def test_fig11_image_from_a_real_checkpoint(runs):
    from repro import report_analysis

    img, n, k, speed = report_analysis.learning_speed_image(runs["old"] / "ckpt.pt", max_rows=25)
    c = torch.load(runs["old"] / "ckpt.pt", weights_only=True)["learning_speed"]
    bits = unpack_bits(c["correct_by_epoch"], 40)  # 15 iterations of 16 over 40 examples: 6 epochs
    assert n == 40 and k == 4 and img.shape == (25, bits.shape[0]) and bits.shape[0] == 6
    order = torch.sort(bits.float().sum(0), stable=True).indices  # hardest first, ties by index
    rows = np.linspace(0, 39, 25).round().astype(int)
    assert np.array_equal(img, bits[:, order].T.numpy()[rows])



def test_fig11_summary_cut_offs_by_hand(tmp_path):
    """Fig. 11's numbers on 40 examples with distinct learning speeds: the example perm[j] is correct in the first
    j of 40 epochs, so the speeds in ascending order are 0/40, 1/40, ..., 39/40, k = floor(0.1 * 40) = 4, the
    hardest cut-off is the 4th lowest (3/40), the easiest the 4th highest (36/40), the mean 19.5/40."""
    import types

    from repro import report_analysis

    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    ls = LearningSpeed(40)
    for epoch in range(40):
        correct = torch.zeros(40, dtype=torch.bool)
        correct[perm[epoch + 1:]] = True  # perm[j] is correct in epochs 0..j-1
        ls.record_epoch(correct)
    (tmp_path / "old").mkdir()
    torch.save({"learning_speed": ls.state_dict()}, tmp_path / "old" / "ckpt.pt")
    md, rows = report_analysis.fig11([str(tmp_path / "old")], types.SimpleNamespace(split="4+2"), str(tmp_path),
                                     str(tmp_path))
    val = {r[3]: float(r[4]) for r in csv.reader(rows)}  # the rows are CSV lines (strings quoted)
    assert val == {"n": 40, "epochs": 40, "k": 4, "hard_cutoff": 3 / 40, "easy_cutoff": 36 / 40,
                   "mean_learning_speed": pytest.approx(19.5 / 40)}
    assert "learning speed <= 0.075; easiest cut-off: >= 0.900; never learned (0): 2.5%; correct at every epoch " \
           "(1): 0.0%;" in " ".join(md)


ARGS = TINY[:-3] + ["--seeds", "2", "--iters", "10", "--eval-every", "2", "--device", "cpu"]


def test_analysis_plan_end_to_end(tmp_path, capsys):
    write_folder(tmp_path / "data", num_classes=6, n_train=10, n_test=4)
    argv = ARGS + ["--plan", "analysis", "--data-dir", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                   "--results", str(tmp_path / "res")]
    assert reproduce.main(argv) == 0
    res, runs = tmp_path / "res", tmp_path / "runs" / "4+2"
    for fig in ("fig11_learning_speed", "fig14_grad_norms", "fig15_losses"):
        assert (res / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(res / "analysis.csv")))
    val = {(r["figure"], r["label"], r["iter"], r["quantity"]): float(r["value"]) for r in rows}
    # Fig. 14: the mean over seeds of each probe's old / new means, at 0, 1, 2, 5, 10
    probes = [lines(runs / f"seed{s}" / "continuous+gradnorms", "grad_norms") for s in (0, 1)]
    assert sorted({int(k[2]) for k in val if k[0] == "fig14"}) == [0, 1, 2, 5, 10]
    for i, (a, b) in enumerate(zip(*probes)):
        for g in ("old", "new"):
            assert val["fig14", "continuous+gradnorms", str(a["iter"]), g] == pytest.approx((a[g] + b[g]) / 2,
                                                                                           rel=1e-5)
    # Fig. 15: test and training loss of naive and scratch, means over seeds (no training loss at 0)
    md = (res / "analysis.md").read_text()
    for lab, name in (("continuous+gradnorms", "Naive"), ("scratch", "Scratch")):
        ev = [lines(runs / f"seed{s}" / lab, "eval") for s in (0, 1)]
        test = {a["iter"]: (a["test_loss"] + b["test_loss"]) / 2 for a, b in zip(*ev)}
        train_loss = {a["iter"]: (a["loss"] + b["loss"]) / 2 for a, b in zip(*ev) if a["iter"] > 0}
        assert list(test) == [0, 2, 4, 6, 8, 10] and list(train_loss) == [2, 4, 6, 8, 10]
        for i, v in test.items():
            assert val["fig15", lab, str(i), "test_loss"] == pytest.approx(v, rel=1e-5)
            assert (("fig15", lab, str(i), "train_loss") in val) == (i > 0)
        for i, v in train_loss.items():
            assert val["fig15", lab, str(i), "train_loss"] == pytest.approx(v, rel=1e-5)
        # the row: min test loss (its iteration), the first evaluation within 5% of it, final test and train loss
        best = min(test, key=lambda i: (test[i], i))
        near = next(i for i in sorted(test) if test[i] <= 1.05 * test[best])
        assert f"| {name} | 2 | {test[best]:.4f} ({best}) | {near} | {test[10]:.4f} | {train_loss[10]:.4f} |" in md
    # Fig. 11: the first seed's old model, its 40 old examples over 4 epochs (10 iterations of 16), 10% cut-offs;
    # learning speeds recomputed from the checkpoint's per-epoch bits, sorted ascending (hardest first)
    state = torch.load(runs / "seed0" / "old" / "ckpt.pt", weights_only=True)["learning_speed"]
    bits = unpack_bits(state["correct_by_epoch"], 40).float()  # [E, 40]
    speed = bits.mean(0)
    ranked = speed.sort().values
    assert bits.shape[0] == 4 and val["fig11", "old", "", "n"] == 40 and val["fig11", "old", "", "k"] == 4
    assert val["fig11", "old", "", "epochs"] == 4
    assert val["fig11", "old", "", "hard_cutoff"] == pytest.approx(float(ranked[3]))  # the 4th hardest
    assert val["fig11", "old", "", "easy_cutoff"] == pytest.approx(float(ranked[36]))  # the 4th easiest
    assert val["fig11", "old", "", "mean_learning_speed"] == pytest.approx(float(speed.mean()), rel=1e-6)
    never = float((speed == 0).float().mean())
    assert f"hardest (top) and 4 easiest (bottom). Hardest cut-off: learning speed <= {float(ranked[3]):.3f}; " \
           f"easiest cut-off: >= {float(ranked[36]):.3f}; never learned (0): {never:.1%}" in md
    # resumable: nothing runs again; the old and scratch runs are Table 1's (same name, same command)
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    assert "6 runs, 6 already finished, 0 to run" in capsys.readouterr().out
    def planned(plan):
        a = reproduce.build_parser().parse_args(argv + ["--plan", plan])
        runs_dir, _ = reproduce.resolve(a)
        return {r.name: reproduce.train_argv(r, a, runs_dir) for r in reproduce.P.PLANS[plan](a, runs_dir)}

    t1, ana = planned("table1"), planned("analysis")
    shared = set(t1) & set(ana)
    assert sorted(n.split("/")[-1] for n in shared) == ["old", "old", "scratch", "scratch"]
    assert all(t1[n] == ana[n] for n in shared) and len(ana) == 6
    assert reproduce.main(argv + ["--list"]) == 0  # one command per run, the probe only on the naive runs
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 6 and [("--grad-norms" in c) for c in listed].count(True) == 2
    assert all(("--grad-norms" in c.split()) == ("/continuous+gradnorms" in c) for c in listed)
    # a finished probe run without its probe (made by hand, say) is refused, not drawn as an empty Fig. 14
    log = runs / "seed1" / "continuous+gradnorms" / "log.jsonl"
    text = log.read_text().splitlines()
    header = json.loads(text[0])
    header["config"]["grad_norms"] = False
    log.write_text("\n".join([json.dumps(header)] + [t for t in text[1:] if '"grad_norms"' not in t]) + "\n")
    with pytest.raises(SystemExit) as e:
        reproduce.main(argv)
    assert e.value.code == 2 and "without the --grad-norms probe" in capsys.readouterr().err


def test_analysis_module_imports_alone(tmp_path):
    """analysis.py is copyable alone, as the method modules (its docstring says so)."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    shutil.copy(os.path.join(ROOT, "analysis.py"), tmp_path)
    r = subprocess.run([sys.executable, "-c", "import analysis; print(analysis.probe_iterations(3))"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0 and r.stdout.strip() == "[0, 1, 2, 3]", r.stderr
