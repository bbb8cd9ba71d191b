"""reproduce.sh's driver on a tiny synthetic image-folder dataset: the whole Table 1 plan (2 seeds x 21 runs),
its table checked against speed-ups recomputed here from the logs, resumability, --list, and refusals."""
import csv
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import train
from conftest import ROOT, curves, independent_max_acc, independent_speedup, write_folder
from repro import plans, reproduce

ARGS = ["--dataset", "folder", "--split", "6+4", "--width", "8", "--batch-size", "32", "--seeds", "2",
        "--iters", "16", "--eval-every", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    write_folder(root / "data", num_classes=10, n_train=12, n_test=6)
    argv = ARGS + ["--data-dir", str(root / "data"), "--runs", str(root / "runs"), "--results", str(root / "res")]
    assert reproduce.main(argv) == 0
    return {"root": root, "argv": argv}


def test_table1_is_complete_and_consistent_with_logs(table):
    res, runs = table["root"] / "res", table["root"] / "runs"
    md = (res / "table1.md").read_text().splitlines()
    body = [line for line in md if line.startswith("| ") and "---" not in line][1:]
    assert len(body) == 10 and all(len(line.split("|")) == 16 for line in body)
    rows = list(csv.DictReader(open(res / "table1.csv")))
    assert len(rows) == 20
    ref = [curves(runs / "6+4" / f"seed{s}" / "scratch") for s in (0, 1)]
    for row in rows:
        cols = ["init"] * (row["init"] == "1") + ["reg"] * (row["reg"] == "1") + ["data"] * (row["data"] == "1")
        label = "+".join([row["column"]] + cols + (["x0.25"] if row["scheduler"] == "0.25" else []))
        cur = [curves(runs / "6+4" / f"seed{s}" / label) for s in (0, 1)]
        m, se = independent_max_acc(cur)
        assert float(row["max_acc"]) == pytest.approx(m, abs=1e-4)
        assert float(row["max_acc_se"]) == pytest.approx(se, abs=1e-4)
        for r in (99, 100):
            want = independent_speedup(ref, cur, r)
            got = row[f"L{r}"]
            if want is None:
                assert got == "", (label, r)
            else:
                assert float(got) == pytest.approx(want, rel=1e-5), (label, r)
            # per seed: each seed's L_r against its own scratch run, mean over the seeds that reach the target
            each = [independent_speedup([ref[s]], [cur[s]], r) for s in (0, 1)]
            each = [x for x in each if x is not None]
            assert int(row[f"L{r}_seeds_reached"]) == len(each), (label, r)
            if each:
                assert float(row[f"L{r}_seeds"]) == pytest.approx(np.mean(each), rel=1e-5), (label, r)
    # '/' in the Markdown exactly where the CSV has no speed-up; the paper's value beside each cell
    cont_l100 = [line.split("|")[7].strip() for line in body]
    csv_l100 = [r["L100"] for r in rows if r["column"] == "continuous"]
    assert [c.startswith("/") for c in cont_l100] == [v == "" for v in csv_l100]
    assert body[0].split("|")[5].strip().endswith("(65.26)") and body[9].split("|")[7].strip().endswith("(x5.32)")
    for fig in ("fig1_scratch_naive_ours", "fig2_initialization", "fig3_objective", "fig4_data", "fig5_scheduler"):
        assert (res / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_runs_only_what_is_unfinished(table):
    runs = table["root"] / "runs"
    logs = {p: p.read_bytes() for p in runs.glob("6+4/seed*/*/log.jsonl")}
    assert len(logs) == 2 * 24  # per seed: the old model, Table 1's 20 runs, 3 more for Fig. 1 and Fig. 5
    victim = runs / "6+4" / "seed1" / "continuous+init"
    lines = (victim / "log.jsonl").read_text().splitlines()
    (victim / "log.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # as if killed before the summary

    def untimed_table():  # the L_r in training seconds depend on how fast this machine ran the re-run
        rows = list(csv.DictReader(open(table["root"] / "res" / "table1.csv")))
        assert "L100_seconds" in rows[0]
        return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]

    def accuracies():
        return [(e["iter"], e["acc"], e["loss"]) for e in curves(victim)]

    table_before, accs_before = untimed_table(), accuracies()
    assert reproduce.main(table["argv"]) == 0
    for p, b in logs.items():
        if p.parent != victim:
            assert p.read_bytes() == b, p  # finished runs are not re-run
    assert json.loads((victim / "log.jsonl").read_text().splitlines()[-1])["event"] == "summary"
    # the re-run is the same computation (same seed): the same accuracies, so the table comes out the same
    assert accuracies() == accs_before and untimed_table() == table_before


def test_a_finished_run_of_another_configuration_is_not_mixed_in(table, capsys):
    argv = [a if a != "16" else "20" for a in table["argv"]]  # --iters 20 into the same runs folder
    with pytest.raises(SystemExit) as e:
        reproduce.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "another configuration" in err and "iters: 16 vs planned 20" in err
    assert len(err.splitlines()) == 1


def test_list_prints_commands_in_dependency_order(table, capsys):
    assert reproduce.main(table["argv"] + ["--list"]) == 0
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 48 and all(c.startswith("python ") and "train.py" in c for c in cmds)
    outs = [c.split("--out ")[1].split()[0] for c in cmds]
    olds = [i for i, o in enumerate(outs) if o.endswith("/old")]
    assert olds == [0, 1]  # both seeds' old models first
    for c in cmds:  # every --old-ckpt is produced by an earlier line
        if "--old-ckpt" in c:
            assert c.split("--old-ckpt ")[1].split()[0].endswith("/old/ckpt.pt")
    # wave 0: old models and scratch runs that read no checkpoint; wave 1: the 10 continuous runs, the 5 scratch
    # runs with easy/hard sampling (learning speed from the old model) and the 3 figure runs of each seed
    assert reproduce.main(table["argv"] + ["--list", "--wave", "0"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 * (1 + 5)
    assert reproduce.main(table["argv"] + ["--list", "--wave", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 * 18


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_refuses_to_run_on_cpu_without_asking(tmp_path):
    r = subprocess.run([os.path.join(ROOT, "reproduce.sh"), "--quick", "--runs", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no GPU found" in r.stderr and "--device cpu" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cpu_time_by_hand():
    """The no-GPU message's estimate: runs x iterations x batch x 3.3e9 FLOPs (ResNet-18, width 64, 32 px),
    scaled by width^2 and pixels, at 1e11 FLOP/s. Table 1: 120 x 39,100 x 128 x 3.3e9 / 1e11 = 1.98e7 s = 32.8
    weeks; the laptop plan's 16 runs: 16 x 3,910 x 128 x 3.3e9 / 16 / 4 / 1e11 = 4,129 s = 68.8 minutes (measured
    on 2 cores: 76.7)."""
    from argparse import Namespace

    paper = Namespace(batch_size=128, width=64, image_size=32, stem="cifar")
    assert reproduce.cpu_time([39100] * 120, paper) == "33 weeks"
    laptop = Namespace(batch_size=128, width=16, image_size=16, stem="cifar")
    assert reproduce.cpu_time([3910] * 16, laptop) == "69 minutes"
    assert reproduce.cpu_time([200], laptop) == "13 seconds"
    assert reproduce.cpu_time([150, 50], laptop) == "13 seconds"  # each run at its own length
    big = Namespace(batch_size=128, width=64, image_size=128, stem="imagenet")  # 128 / 4 = 32 px left
    assert reproduce.cpu_time([39100] * 3, big) == reproduce.cpu_time([39100] * 3, paper) == "6 days"


def test_planned_runs_are_counted_at_the_length_they_train(tmp_path):
    """A run's iterations from the command line the driver gives it (planned, then train.run_length, as the no-GPU
    message counts them), so the laptop plan's x0.5 rows count half of --iters and its plateau check twice."""
    args = reproduce.build_parser().parse_args(["--plan", "laptop", "--device", "cpu", "--runs", str(tmp_path)])
    runs_dir, _ = reproduce.resolve(args)
    iters = {r.name: train.run_length(reproduce.planned(r, args, runs_dir))
             for r in plans.PLANS["laptop"](args, runs_dir)}
    assert iters["8+2/seed0/scratch"] == args.iters == 3910
    assert iters["8+2/seed0/continuous+init+reg+data+x0.5"] == 1955 and iters["8+2/seed0/scratch-2x-iters"] == 7820


@pytest.mark.parametrize("flag, want", [([], None), (["--cuda-graph"], True), (["--no-cuda-graph"], False)])
def test_the_driver_leaves_the_graph_to_train_py_unless_told(tmp_path, flag, want):
    args = reproduce.build_parser().parse_args(["--plan", "laptop", "--runs", str(tmp_path), *flag])
    runs_dir, _ = reproduce.resolve(args)
    for r in plans.PLANS["laptop"](args, runs_dir):
        assert reproduce.planned(r, args, runs_dir).cuda_graph is want  # None: train.py's default for its device


def test_finished_runs_from_before_a_switch_at_its_old_behaviour_are_kept(table, capsys):
    # --keep-optimizer-state and --per-class came later; their defaults (a fresh Adam, every training image) are
    # what a run did before them, so a log without those keys is the planned run: neither refused nor redone, and
    # its table the same as before (one seed without the keys, the other with them: still one row)
    log = table["root"] / "runs" / "6+4" / "seed0" / "continuous+init" / "log.jsonl"
    original = log.read_text()
    lines = original.splitlines()
    header = json.loads(lines[0])
    for key in ("keep_optimizer_state", "per_class"):
        del header["group"][key]
    edited = "\n".join([json.dumps(header)] + lines[1:]) + "\n"
    log.write_text(edited)
    try:
        before = (table["root"] / "res" / "table1.csv").read_text()
        assert reproduce.main(table["argv"]) == 0
        assert log.read_text() == edited  # kept as it is, not trained again
        assert (table["root"] / "res" / "table1.csv").read_text() == before
        header["group"]["keep_optimizer_state"] = True  # but another value is another configuration
        log.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
        with pytest.raises(SystemExit) as e:
            reproduce.main(table["argv"])
        assert e.value.code == 2 and "keep_optimizer_state: True vs planned False" in capsys.readouterr().err
    finally:
        log.write_text(original)


def test_finished_runs_of_the_old_behaviour_are_refused(table, capsys):
    # a log written before a switch existed (here: BatchNorm statistics under shrink-perturb) has no value for it:
    # the driver must refuse it rather than mix it into a table of the new behaviour
    log = table["root"] / "runs" / "6+4" / "seed0" / "continuous+init" / "log.jsonl"
    original = log.read_text()
    lines = original.splitlines()
    header = json.loads(lines[0])
    del header["group"]["sp_keep_bn_stats"]
    log.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    try:
        with pytest.raises(SystemExit) as e:
            reproduce.main(table["argv"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "sp_keep_bn_stats: None vs planned False" in err
    finally:
        log.write_text(original)


def results_dir(*argv):
    return reproduce.resolve(reproduce.build_parser().parse_args(list(argv)))[1]


def test_only_the_papers_setting_writes_into_results(tmp_path):
    """results/ holds the paper's setting of a plan; whatever changes a number (anything in the runs folder's
    name, the split, seeds, evaluation interval, target, the Fig. 6 chain) is a trial and goes elsewhere. The
    precision is recorded in every log but is not part of the setting: the paper states none."""
    assert results_dir() == "results"
    assert results_dir("--amp", "fp32") == "results"
    assert results_dir("--plan", "fig6") == "results"  # the chain runs its schedules (Sec. 4.2)
    adaptiope = str(tmp_path / "Adaptiope")
    assert results_dir("--plan", "fig7", "--data-dir", adaptiope) == "results"
    for trial in (["--stem", "imagenet"], ["--iters", "1000"], ["--width", "32"], ["--batch-size", "64"],
                  ["--seeds", "3"], ["--eval-every", "100"], ["--target", "final"], ["--split", "50+50"],
                  ["--dataset", "cifar10"], ["--plan", "fig6", "--chain-stop", "l100"],
                  ["--plan", "fig6", "--chain-scale", "0.5"],
                  ["--plan", "fig7", "--data-dir", adaptiope, "--image-size", "64"],
                  ["--plan", "fig7", "--data-dir", adaptiope, "--stem", "cifar"],
                  ["--plan", "fig7", "--data-dir", str(tmp_path / "other")]):
        got = results_dir(*trial)
        assert got != "results" and got.startswith("results" + os.sep), trial


def test_the_batch_size_check_counts_each_seeds_own_classes():
    """The driver's --batch-size check counts a run's task as train.py selects it (task_labels): with classes of
    unequal size, which classes task 0 holds depends on the run's seed (its --split-seed)."""
    import types

    sizes = [1, 2, 4, 8]  # training images of classes 0..3: every pair of classes has its own total
    y = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    train, test = (torch.zeros(len(y), 1), y), (torch.zeros(4, 1), torch.arange(4))
    totals = set()
    for seed in range(6):
        first = torch.randperm(4, generator=torch.Generator().manual_seed(seed)).tolist()[:2]  # the seeded order
        for task, want in ((0, sizes[first[0]] + sizes[first[1]]), (1, sum(sizes))):
            run = types.SimpleNamespace(split="2+2", seed=seed, task=task)
            assert len(reproduce.task_labels(train, test, 4, run).y) == want
        totals.add(sizes[first[0]] + sizes[first[1]])
    assert len(totals) > 1  # the seeds do pick different classes
