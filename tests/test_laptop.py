"""The laptop plan (Table 2a's CIFAR-10 rows sized for a CPU): its run list and settings, the training subset
(--per-class), CIFAR at another resolution, the plan end to end on synthetic CIFAR pickles, and the committed
table rebuilt byte for byte from the committed logs and its numbers recomputed from them independently."""
import csv
import glob
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest
import torch

import data as D
import resnet
import train
from conftest import ROOT, curves, independent_max_acc, independent_speedup, write_cifar
from repro import plans, reproduce

LAPTOP = os.path.join(ROOT, "results", "laptop")


# ------------------------------------------------------------------------------------ the subset

def test_take_per_class_keeps_n_of_each_class_from_one_seeded_permutation():
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)[torch.randperm(21, generator=torch.Generator().manual_seed(3))]
    x = torch.arange(21, dtype=torch.uint8).view(21, 1, 1, 1).expand(21, 3, 2, 2).contiguous()  # pixel = position
    names = ["a", "b", "c"]
    x3, y3 = D.take_per_class((x, y), 3, names)
    x5, y5 = D.take_per_class((x, y), 5, names)
    assert torch.bincount(y3).tolist() == [3, 3, 3] and torch.bincount(y5).tolist() == [5, 5, 5]
    pos3, pos5 = x3[:, 0, 0, 0].long(), x5[:, 0, 0, 0].long()
    assert torch.equal(y[pos3], y3) and torch.equal(y[pos5], y5)  # images keep their labels
    assert torch.equal(pos3, pos3.sort().values)  # in the dataset's own order
    assert set(pos3.tolist()) <= set(pos5.tolist())  # the first n of one permutation: nested subsets
    assert torch.equal(D.take_per_class((x, y), 3, names)[0], x3)  # the same subset every time
    # which images: the first 3 of each class in torch.randperm(21) of a generator seeded 0, written out here
    perm = torch.randperm(21, generator=torch.Generator().manual_seed(0)).tolist()
    want = sorted(p for c in range(3) for p in [p for p in perm if y[p] == c][:3])
    assert pos3.tolist() == want and want != sorted(p for c in range(3) for p in (y == c).nonzero()[:3, 0].tolist())
    assert D.take_per_class((x, y), 0, names)[0] is x
    with pytest.raises(ValueError, match="class 'b' has only 5 training images"):
        D.take_per_class((x, y), 6, names)


def test_per_class_changes_the_data_identity(tmp_path, no_checksum):
    write_cifar(tmp_path, "cifar10", n_train=6, n_test=2)
    full = D.load_for_split("cifar10", str(tmp_path), "8+2", download=False)
    sub = D.load_for_split("cifar10", str(tmp_path), "8+2", download=False, per_class=4)
    assert len(sub[0][1]) == 40 and torch.equal(sub[1][0], full[1][0])  # the test set is whole
    a, b = D.identity(*full), D.identity(*sub, per_class=4)
    assert b["per_class"] == 4 and b["num_train"] == 40 and D.identity_diff(b, a) is not None
    # the per_class key is what tells a subset from a whole dataset of the same images
    assert D.identity_diff(D.identity(*sub, per_class=4), D.identity(*sub)) is not None


# ------------------------------------------------------------------------------------ the plan

def planned(capsys, *extra):
    assert reproduce.main(["--plan", "laptop", "--list", "--device", "cpu", *extra]) == 0
    return [train.parse_or_raise(shlex.split(line)[2:]) for line in capsys.readouterr().out.splitlines()]


def test_laptop_plan_runs_and_settings(capsys):
    runs = planned(capsys)
    by = {}
    for a in runs:
        by.setdefault(a.label, []).append(a)
    assert {k: len(v) for k, v in by.items()} == {"old": 3, "scratch": 3, "continuous": 3, plans.OURS: 3,
                                                  plans.OURS + "+x0.5": 3, plans.PLATEAU: 1}
    for a in runs:  # the paper's settings (App. A.2, Sec. 3); only the size is the laptop's
        assert (a.dataset, a.split, a.batch_size, a.lr, a.lr_min, a.schedule) == ("cifar10", "8+2", 128, 1e-3, 1e-6,
                                                                                 "cosine")
        assert (a.sp_alpha, a.sp_beta, a.reg_lambda, a.eh_c, a.eh_r) == (0.4, 0.001, 0.01, 0.2, 0.1)
        assert (a.width, a.image_size, a.per_class, a.eval_every, a.amp) == (16, 16, 100, 78, "fp32")
        assert a.iters == (7820 if a.label == plans.PLATEAU else 3910)
        assert a.seed == a.split_seed and a.seed in (0, 1, 2)
    # L99 / L100: each x1 run is evaluated 50 times or more (docs/laptop.md: 52), at its start, every 78
    # iterations and its end; the x0.5 rows on the same grid of iterations (eval_every above), over half of it
    full = [a for a in runs if a.schedule_scale == 1.0]
    assert len(full) == 13 and all(math.ceil(train.run_length(a) / a.eval_every) + 1 >= 50 for a in full)
    ours, half = by[plans.OURS][0], by[plans.OURS + "+x0.5"][0]
    assert (ours.init, ours.reg, ours.sampler, ours.schedule_scale) == ("shrink_perturb", "l2init", "easy_hard", 1.0)
    assert (half.init, half.reg, half.sampler, half.schedule_scale) == ("shrink_perturb", "l2init", "easy_hard", 0.5)
    cont, scratch = by["continuous"][0], by["scratch"][0]
    assert (cont.init, cont.reg, cont.sampler) == ("old", "none", "uniform")
    assert (scratch.init, scratch.sp, scratch.reg, scratch.sampler) == ("scratch", False, "none", "uniform")
    assert by[plans.PLATEAU][0].seed == 0 and by["old"][0].task == 0 and ours.old_ckpt.endswith("seed0/old/ckpt.pt")
    quick = planned(capsys, "--quick")
    assert {a.iters for a in quick} == {400, 800} and {a.eval_every for a in quick} == {8}  # round(400*78/3910)


def test_laptop_writes_its_own_results_folder_only_at_its_setting():
    def results(*extra):
        args = reproduce.build_parser().parse_args(["--plan", "laptop", "--device", "cpu", *extra])
        return reproduce.resolve(args)[1]

    assert results() == os.path.join("results", "laptop")
    for extra in (["--width", "8"], ["--per-class", "250"], ["--image-size", "32"], ["--seeds", "2"]):
        assert results(*extra) != os.path.join("results", "laptop"), extra


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_a_gpu_the_error_names_the_laptop_plan(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--quick", "--runs", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--plan laptop" in err and len(err.strip().splitlines()) == 1


def test_laptop_quick_end_to_end(tmp_path, no_checksum, capsys):
    write_cifar(tmp_path / "data", "cifar10", n_train=20, n_test=10)
    runs, res = tmp_path / "runs", tmp_path / "res"
    argv = ["--plan", "laptop", "--quick", "--per-class", "12", "--width", "4", "--batch-size", "16", "--iters",
            "24", "--device", "cpu", "--jobs-per-gpu", "1", "--data-dir", str(tmp_path / "data"), "--runs",
            str(runs), "--results", str(res)]
    assert reproduce.main(argv) == 0
    md = (res / "laptop.md").read_text()
    for row in ("Scratch", "Continuous", "Ours (x1)", "Ours (x0.5)"):
        line = next(x for x in md.splitlines() if x.startswith(f"| {row} |"))
        assert "(not run)" not in line
    logs = {}
    for path in runs.rglob("log.jsonl"):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        logs[path.parent.relative_to(runs).as_posix()] = lines
    assert len(logs) == 2 * 5 + 1
    plateau, one = logs["8+2/seed0/scratch-2x-iters"], logs["8+2/seed0/scratch"]
    assert plateau[0]["config"]["iters"] == 48 and plateau[-1]["iters"] == 48
    assert plateau[0]["data"]["per_class"] == 12 and plateau[0]["data"]["num_train"] == 120
    best = lambda lines: max(x["acc"] for x in lines if x["event"] == "eval")  # noqa: E731
    assert f"{best(one):.2f} at 24 iterations, {best(plateau):.2f} at 48" in md
    gain = best(plateau) - best(one)
    assert f"{gain:+.2f} points, {'on' if gain < 1 else 'NOT on'} the plateau" in md
    commit = (plateau[0]["versions"]["git_commit"] or "?")[:7]  # every run of the plan is of this checkout
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert commit == (head[:7] or "?")  # "?" only outside a git checkout
    device = plateau[0]["versions"]["device"]  # platform.processor(): '' on some Linux images, 'x86_64' on others
    assert device == (platform.processor() or "cpu")
    assert (f"Made with (from the runs' headers): torch {torch.__version__}, Python {platform.python_version()}, "
            f"{device}, code of commit {commit}.") in md
    for path in runs.rglob("log.jsonl"):  # the line is read from the headers, whatever this machine is called
        lines = path.read_text().splitlines()
        header = json.loads(lines[0])
        header["versions"]["device"] = "Some CPU 9000"
        path.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    assert reproduce.main(argv + ["--report-only"]) == 0
    assert f"Python {platform.python_version()}, Some CPU 9000, code of commit" in (res / "laptop.md").read_text()
    accs = [logs[f"8+2/seed{s}/old"][-1]["train_acc"] for s in (0, 1)]
    assert "- Old model: {:.2f} ± {:.2f} (2 seeds)".format(np.mean(accs), np.std(accs, ddof=1) / math.sqrt(2)) in md
    # the train_acc of a run is its final model's accuracy on its (unaugmented) training images: recomputed here
    # from its checkpoint, with the normalisation written out (population mean and std of the task's images)
    ckpt = torch.load(runs / "8+2/seed0/scratch/ckpt.pt", weights_only=False)
    (x, y), _, _ = D.load_for_split("cifar10", str(tmp_path / "data"), "8+2", 16, False, 12)
    x, y = x[ckpt["index"]], torch.tensor([ckpt["class_order"].index(int(c)) for c in y[ckpt["index"]]])
    px = x.double().numpy() / 255
    mean, std = px.mean(axis=(0, 2, 3), keepdims=True), px.std(axis=(0, 2, 3), keepdims=True)
    model = resnet.resnet18(ckpt["num_classes"], ckpt["width"], ckpt["stem"]).eval()
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        hit = model(torch.from_numpy((px - mean) / std).float()).argmax(1) == y
    assert logs["8+2/seed0/scratch"][-1]["train_acc"] == pytest.approx(100 * hit.double().mean().item())
    assert all(0 <= lines[-1]["train_acc"] <= 100 for lines in logs.values())
    # run again: the finished --per-class runs are recognised as the same data and configuration, and kept
    before = {p: p.read_bytes() for p in runs.rglob("log.jsonl")}
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    assert "11 already finished, 0 to run" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in runs.rglob("log.jsonl")} == before
    # a summary edited by hand: one line naming the file and the field, not a traceback
    log = runs / "8+2/seed0/scratch-2x-iters/log.jsonl"
    text = log.read_text()
    for key, edit, want in (("max_acc", '"max_acc": "high", "was": ', "max_acc = high"),
                            ("max_acc", '"was": ', "max_acc = None"),
                            ("train_acc", '"train_acc": "high", "was": ', "train_acc = high")):
        log.write_text(text.replace(f'"{key}": ', edit))
        with pytest.raises(SystemExit) as e:
            reproduce.main(argv + ["--report-only"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and want in err, err
    # the plateau verdict's line is 1 point: a run at twice the iterations 0.99 points better is on it, 1.00 not.
    # Both maxima set by hand (50 and 50 + gain), so that the gain of 1 is exactly 1 in floating point
    scratch = runs / "8+2/seed0/scratch/log.jsonl"
    lines = scratch.read_text().splitlines()
    scratch.write_text("\n".join(lines[:-1] + [json.dumps({**json.loads(lines[-1]), "max_acc": 50.0})]) + "\n")
    summary = json.loads(text.splitlines()[-1])
    for gain, verdict in ((0.99, "on the plateau (< 1 point)"), (1.0, "NOT on the plateau (>= 1 point)"),
                          (1.01, "NOT on the plateau (>= 1 point)")):
        lines = text.splitlines()[:-1] + [json.dumps({**summary, "max_acc": 50.0 + gain})]
        log.write_text("\n".join(lines) + "\n")
        assert reproduce.main(argv + ["--report-only"]) == 0
        assert f"{gain:+.2f} points, {verdict}." in (res / "laptop.md").read_text()


@pytest.mark.skipif(not os.path.isfile(os.path.join(LAPTOP, "laptop.md")), reason="no committed laptop table")
def test_report_only_rebuilds_the_committed_laptop_table(tmp_path):
    md = open(os.path.join(LAPTOP, "laptop.md"), encoding="utf-8").read()
    command = next(x for x in md.splitlines() if "command: `./reproduce.sh " in x)
    argv = shlex.split(command.split("command: `./reproduce.sh ")[1].rstrip("`"))
    shutil.copytree(os.path.join(LAPTOP, "logs"), tmp_path / "runs")
    assert reproduce.main(argv + ["--report-only", "--runs", str(tmp_path / "runs"), "--results",
                                  str(tmp_path / "res")]) == 0
    for name in ("laptop.md", "laptop.csv"):
        assert (tmp_path / "res" / name).read_bytes() == open(os.path.join(LAPTOP, name), "rb").read(), name


@pytest.mark.skipif(not os.path.isfile(os.path.join(LAPTOP, "laptop.md")), reason="no committed laptop table")
def test_committed_laptop_table_agrees_with_its_logs_recomputed_independently():
    """Each row's Max Acc (± s.e.) and L99 / L100 of the committed table, recomputed from the committed logs with
    Eq. 1-2 written again (conftest), not with the code that wrote the table."""
    seeds = sorted(glob.glob(os.path.join(LAPTOP, "logs", "8+2", "seed*")))
    runs = {label: [curves(os.path.join(s, label)) for s in seeds] for label in
            ("scratch", "continuous", plans.OURS, plans.OURS + "+x0.5")}
    rows = list(csv.DictReader(open(os.path.join(LAPTOP, "laptop.csv"), encoding="utf-8")))
    assert sorted(r["label"] for r in rows) == sorted(runs) and all(int(r["n"]) == len(seeds) for r in rows)
    for row in rows:
        cur = runs[row["label"]]
        acc, se = independent_max_acc(cur)
        assert float(row["max_acc"]) == pytest.approx(acc, abs=1e-3) and float(row["max_acc_se"]) == \
            pytest.approx(se, abs=1e-5), row["label"]
        for r in (99, 100):
            want = independent_speedup(runs["scratch"], cur, r)
            assert (row[f"L{r}"] == "") if want is None else float(row[f"L{r}"]) == pytest.approx(want, rel=1e-5)


@pytest.mark.skipif(not os.path.isfile(os.path.join(LAPTOP, "laptop.md")), reason="no committed laptop table")
def test_readme_result_is_the_committed_laptop_table():
    """The README's result table carries the committed table's cells, column by column (no stale numbers)."""
    def table(text, after):
        lines = text[text.index(after):].splitlines()
        start = next(i for i, x in enumerate(lines) if x.startswith("| Row |"))
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        rows = [[c.strip() for c in x.strip("|").split("|")] for x in lines[start:end]]
        return rows[0], {r[0]: r for r in rows[2:]}

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    head, ours = table(readme, "<!-- result -->")
    full_head, full = table(open(os.path.join(LAPTOP, "laptop.md"), encoding="utf-8").read(), "| Row |")
    assert set(ours) == {"Scratch", "Continuous", "Ours (x1)", "Ours (x0.5)"} and set(ours) <= set(full)
    for row, cells in ours.items():
        assert cells == [full[row][full_head.index(h)] for h in head], row
    made = open(os.path.join(LAPTOP, "laptop.md"), encoding="utf-8").read()
    seeds = re.search(r"(\d+) seed\(s\)", made).group(1)
    assert f"3,910 iterations = 500 epochs, {seeds} seeds;" in readme
    # the README credits the command the table records it was made with
    assert "`" + re.search(r"command: `([^`]+)`", made).group(1) + "` on two CPU cores" in readme
