"""The other plans of reproduce.sh (table2a, table2b, fig6, appendix) on a tiny synthetic image folder:
each output table is complete and its numbers agree with a re-computation from the run logs."""
import csv
import errno
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

import runlog
from ckpt import weights_hash
from conftest import (curves, edit_log, gpu_like, independent_max_acc, independent_speedup, perturb, without,
                      write_folder)
from repro import plans, report, reproduce

COMMON = ["--dataset", "folder", "--width", "8", "--batch-size", "32", "--iters", "12", "--eval-every", "3",
          "--device", "cpu"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("plans")
    write_folder(root / "data", num_classes=10, n_train=10, n_test=4)
    return root


def common(root, runs, res):
    return COMMON + ["--data-dir", str(root / "data"), "--runs", str(root / runs), "--results", str(root / res)]


def run_plan(root, plan, *extra):
    argv = common(root, "runs", "res") + ["--plan", plan, *extra]
    assert reproduce.main(argv) == 0
    return argv


def check_row(row, runs_dirs, ref_dirs):
    """A CSV row against the logs: Max Acc mean over seeds, L99 / L100 recomputed independently."""
    cur, ref = [curves(d) for d in runs_dirs], [curves(d) for d in ref_dirs]
    assert int(row["n"]) == len(runs_dirs)
    assert float(row["max_acc"]) == pytest.approx(independent_max_acc(cur)[0], abs=1e-4)
    for r in (99, 100):
        want = independent_speedup(ref, cur, r)
        assert (row[f"L{r}"] == "") if want is None else float(row[f"L{r}"]) == pytest.approx(want), (row, r)


TABLE2A = ["--plan", "table2a", "--split", "8+2", "--seeds", "2", "--compare-to", "cifar10"]  # 10 runs


@pytest.fixture(scope="module")
def table2a(root):
    """Table 2a (2 seeds) run once, in-process; returns its CSV rows."""
    run_plan(root, "table2a", *TABLE2A[2:])
    return list(csv.DictReader(open(root / "res" / "table2a_cifar10.csv")))


def test_table2a(root, table2a, capsys):
    rows = table2a
    assert [r["row"] for r in rows] == ["Scratch", "Continuous", "Ours (x1)", "Ours (x0.5)"]
    assert [r["paper_max_acc"] for r in rows] == ["83.32", "81.37", "83.95", "84.33"]
    run = lambda s, lab: root / "runs" / "8+2" / f"seed{s}" / lab  # noqa: E731
    for r in rows:
        check_row(r, [run(s, r["label"]) for s in (0, 1)], [run(s, "scratch") for s in (0, 1)])
    md = (root / "res" / "table2a_cifar10.md").read_text()
    assert "CIFAR-10 (8+2)" in md and md.count("seed 0:") == 5  # wall time of every run, old models too
    assert (root / "res" / "table2a_cifar10.png").exists()
    capsys.readouterr()
    assert reproduce.main(common(root, "runs", "res") + TABLE2A + ["--list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 * 5


def test_table2b(root):
    run_plan(root, "table2b", "--split", "8+2,6+4", "--seeds", "1")
    rows = list(csv.DictReader(open(root / "res" / "table2b.csv")))
    assert [(r["section"], r["row"]) for r in rows] == [
        (s, a) for s in ("8+2", "6+4") for a, _ in plans.TABLE2B_ROWS]
    # the scratch rows see the same data, labels and seed in every split: trained once, under the first split
    shared = root / "runs" / "8+2" / "seed0"
    assert sorted(p.name for p in (root / "runs" / "6+4" / "seed0").iterdir() if p.name.startswith("scratch")) == []
    for r in rows:  # the reference of each split is Scratch + L2-init
        d = root / "runs" / r["section"] / "seed0"
        check_row(r, [(shared if r["label"].startswith("scratch") else d) / r["label"]], [shared / "scratch+reg"])
    for s in ("8-2", "6-4"):
        assert (root / "res" / f"table2b_{s}.png").exists()


def test_fig6_chain_runs_each_schedule_by_default(root, monkeypatch):
    """Sec. 4.2: the chain trains every task's schedule to the end ("in total, the continuous models have trained
    for more iterations"); beside its total, the cost to each task's L100 point: the earlier tasks' whole
    training plus this task's iterations to its scratch model's Max Acc on the seed-averaged curve."""
    argv = run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "2")
    rows = list(csv.DictReader(open(root / "res" / "fig6.csv")))
    assert [int(r["task"]) for r in rows] == [1, 2, 3]
    legends = []  # the figure's legend names its curves (drawn only when a task has them)
    monkeypatch.setattr(report, "save", lambda fig, path: legends.append(fig.axes[0].get_legend()))
    assert reproduce.main(argv + ["--report-only"]) == 0 and len(legends) == 1 and legends[0] is not None
    before = 0
    for r in rows:
        t = int(r["task"])
        cont = [root / "runs" / "4+2x3" / f"seed{s}" / f"task{t}" / f"schedule-{plans.OURS}" for s in (0, 1)]
        ref = [root / "runs" / "4+2x3" / f"seed{s}" / f"task{t}" / "scratch" for s in (0, 1)]
        assert [curves(c)[-1]["iter"] for c in cont] == [12, 12]  # no early stop
        header = json.loads(open(cont[1] / "log.jsonl").readline())
        prev = "old" if t == 1 else f"task{t - 1}/schedule-{plans.OURS}"
        assert header["config"]["old_ckpt"].endswith(f"seed1/{prev}/ckpt.pt")
        mean = np.mean([[e["acc"] for e in curves(c)] for c in cont], axis=0)
        a = np.max(np.mean([[e["acc"] for e in curves(d)] for d in ref], axis=0))
        hit = [3 * k for k, m in enumerate(mean) if m >= a]
        if hit:
            assert float(r["chain_to_L100"]) == hit[0] and float(r["chain_to_L100_cumulative"]) == before + hit[0]
        else:
            assert r["chain_to_L100"] == r["chain_to_L100_cumulative"] == ""
        before += 12
        assert float(r["chain_cumulative"]) == before


def test_fig6_chain_carried_as_logs_resumes_down_the_chain(root, capsys):
    """Logs carried without checkpoints, one run of the last task unfinished: it starts from task 2's model,
    which starts from task 1's, from the old model's; all three are trained again (on a CPU to the same weights,
    so the seed's other finished runs are kept), and the other seed, finished, is left whole."""
    run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "2")
    runs = root / "runs_chain"
    shutil.copytree(root / "runs" / "4+2x3", runs / "4+2x3")
    for ckpt in runs.rglob("ckpt.pt"):
        ckpt.unlink()
    seed0, seed1 = runs / "4+2x3" / "seed0", runs / "4+2x3" / "seed1"
    (seed0 / "task3" / f"schedule-{plans.OURS}" / "log.jsonl").unlink()
    before = {p: p.read_bytes() for p in seed1.rglob("*") if p.is_file()}
    capsys.readouterr()
    argv = common(root, "runs_chain", "res_chain") + ["--plan", "fig6", "--split", "4+2x3", "--seeds", "2"]
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    again = [line.split(":")[0] for line in out.splitlines() if "that later runs start from is gone" in line]
    assert sorted(again) == sorted(f"4+2x3/seed0/{r}" for r in ("old", f"task1/schedule-{plans.OURS}",
                                                                 f"task2/schedule-{plans.OURS}")), out
    assert (seed0 / "task3" / f"schedule-{plans.OURS}" / "log.jsonl").is_file()
    assert {p: p.read_bytes() for p in seed1.rglob("*") if p.is_file()} == before
    # only the old model's ckpt.pt gone: the unfinished run starts from task 2's, which is there, so nothing up
    # the chain is trained again (a chain walked to its root would retrain the whole seed)
    runs = root / "runs_chain_root"
    shutil.copytree(root / "runs" / "4+2x3", runs / "4+2x3")
    seed0 = runs / "4+2x3" / "seed0"
    (seed0 / "old" / "ckpt.pt").unlink()
    (seed0 / "task3" / f"schedule-{plans.OURS}" / "log.jsonl").unlink()
    again = seed0 / "task3" / f"schedule-{plans.OURS}"
    before = {p: p.read_bytes() for p in (runs / "4+2x3").rglob("*") if p.is_file() and again not in p.parents}
    capsys.readouterr()
    argv = common(root, "runs_chain_root", "res_chain_root") + ["--plan", "fig6", "--split", "4+2x3", "--seeds", "2"]
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert "that later runs start from is gone" not in out, out
    assert (again / "log.jsonl").is_file() and {p: p.read_bytes() for p in before} == before


def test_fig6_chain_is_kept_link_by_link_when_its_old_model_trains_again(root, capsys, monkeypatch):
    """The old model's log lost, the rest of the chain finished: the old model trains again (on a CPU to the same
    weights), then each link, pending on the one before, is checked and kept in one pass down the chain; none
    is left waiting on a link kept in the same pass (the driver stopped there with 'unsatisfiable
    dependencies'). The same with the plan listing the runs backwards: the driver orders them itself."""
    run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "2")
    fig6 = plans.PLANS["fig6"]
    for name, listed in (("runs_lost", fig6), ("runs_lost_backwards", lambda *a: fig6(*a)[::-1])):
        monkeypatch.setitem(plans.PLANS, "fig6", listed)
        runs = root / name
        shutil.copytree(root / "runs" / "4+2x3", runs / "4+2x3")
        (runs / "4+2x3" / "seed0" / "old" / "log.jsonl").unlink()
        logs = {p: p.read_bytes() for p in runs.rglob("log.jsonl")}
        capsys.readouterr()
        argv = common(root, name, f"res_{name}") + ["--plan", "fig6", "--split", "4+2x3", "--seeds", "2"]
        assert reproduce.main(argv) == 0
        out = capsys.readouterr().out
        kept = [line.split()[1] for line in out.splitlines() if "kept: the runs it depends on did not change" in line]
        assert kept == [f"4+2x3/seed0/task{t}/schedule-{plans.OURS}" for t in (1, 2, 3)], out
        assert "10 already finished, 4 to run" in out and "0 failed" in out
        assert {p: p.read_bytes() for p in logs} == logs and (runs / "4+2x3" / "seed0" / "old" / "log.jsonl").is_file()


def test_fig6_chain_stopped_at_l100(root, capsys):
    argv = run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "2", "--chain-stop", "l100")
    rows = list(csv.DictReader(open(root / "res" / "fig6.csv")))
    assert [int(r["task"]) for r in rows] == [1, 2, 3] and [int(r["classes"]) for r in rows] == [6, 8, 10]
    cum_chain = cum_scratch = 0
    for r in rows:
        t = int(r["task"])
        cont = [root / "runs" / "4+2x3" / f"seed{s}" / f"task{t}" / f"l100-{plans.OURS}" for s in (0, 1)]
        ref = [root / "runs" / "4+2x3" / f"seed{s}" / f"task{t}" / "scratch" for s in (0, 1)]
        for c, s in zip(cont, ref):  # --chain-stop l100: a link ends at the first evaluation after training that
            # reaches its seed's scratch maximum, or runs in full
            target, accs = max(e["acc"] for e in curves(s)), [e["acc"] for e in curves(c)]
            assert all(a < target for a in accs[1:-1]) and (accs[-1] >= target or curves(c)[-1]["iter"] == 12)
        # seeds that stopped early hold their last accuracy (a stopped model does not change) to the longest's end
        held = [curves(c) for c in cont]
        held = [h + [{**h[-1], "iter": i} for i in range(h[-1]["iter"] + 3, 13, 3)] for h in held]
        want = independent_speedup([curves(d) for d in ref], held, 100)
        assert (r["L100"] == "") if want is None else float(r["L100"]) == pytest.approx(want)
        assert float(r["chain_max_acc"]) == pytest.approx(independent_max_acc(held)[0], abs=1e-4)
        # the chain is charged every iteration it trained, the scratch runs theirs (means over seeds)
        chain_iters = np.mean([curves(c)[-1]["iter"] for c in cont])
        cum_chain += chain_iters
        cum_scratch += 12
        assert float(r["chain_iters"]) == pytest.approx(chain_iters) and float(r["scratch_iters"]) == 12
        assert float(r["chain_cumulative"]) == pytest.approx(cum_chain)
        assert float(r["scratch_cumulative"]) == cum_scratch
        # the chain's task t starts from task t-1's continuous model
        header = json.loads(open(cont[0] / "log.jsonl").readline())
        prev = "old" if t == 1 else f"task{t - 1}/l100-{plans.OURS}"
        assert header["config"]["old_ckpt"].endswith(f"seed0/{prev}/ckpt.pt")
    assert (root / "res" / "fig6.png").exists()
    capsys.readouterr()
    assert reproduce.main(argv + ["--list"]) == 0
    outs = [c.split("--out ")[1].split()[0] for c in capsys.readouterr().out.strip().splitlines()]
    assert len(outs) == 2 * (1 + 3 * 2)
    pos = {o: i for i, o in enumerate(outs)}
    for s in (0, 1):  # every chain link is listed after the link it continues from
        chain = [f"seed{s}/old"] + [f"seed{s}/task{t}/l100-{plans.OURS}" for t in (1, 2, 3)]
        idx = [next(i for o, i in pos.items() if o.endswith(c)) for c in chain]
        assert idx == sorted(idx)


def test_an_l100_link_stopped_at_another_scratch_maximum_is_trained_again(root, capsys, monkeypatch):
    """--chain-stop l100: a link records the accuracy it stopped at (its scratch run's maximum as it started). A
    scratch run trained again to another maximum (as on a GPU) makes the link another run: --report-only refuses
    it in one line and the driver trains it again to the new target; one trained again to the same maximum (on a
    CPU) keeps it; a link whose log records no target is trained again once its scratch run is."""
    run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "2", "--chain-stop", "l100")
    runs = root / "runs_l100"
    shutil.copytree(root / "runs" / "4+2x3", runs / "4+2x3")
    task1 = runs / "4+2x3" / "seed0" / "task1"
    link, scratch = task1 / f"l100-{plans.OURS}", task1 / "scratch"
    target = max(e["acc"] for e in curves(scratch))
    assert json.loads(open(link / "log.jsonl").readline())["stop_at_acc"] == target
    argv = common(root, "runs_l100", "res_l100") + ["--plan", "fig6", "--split", "4+2x3", "--seeds", "2",
                                                     "--chain-stop", "l100"]

    # the scratch log lost: trained again, to the same maximum on a CPU, so the link is kept, its log untouched
    (scratch / "log.jsonl").unlink()
    kept = (link / "log.jsonl").read_bytes()
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert any(f"4+2x3/seed0/task1/l100-{plans.OURS} " in line and "kept: the runs it depends on" in line
               for line in out.splitlines()), out
    assert (link / "log.jsonl").read_bytes() == kept
    # the link stopped at another maximum than its scratch run's now: refused by a report, trained again by a run
    edit_log(link / "log.jsonl", header=lambda h: {**h, "stop_at_acc": target - 10})
    with pytest.raises(SystemExit) as e:
        reproduce.main(argv + ["--report-only"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"it stopped at {target - 10}, {scratch}'s maximum then, not at its maximum now ({target})" in err, err
    # its log cannot be set aside (a folder it cannot write): one line, the log as it was, nothing trained
    kept, real = (link / "log.jsonl").read_bytes(), os.replace

    def replace(src, dst):
        if str(dst).endswith(runlog.STALE):
            raise PermissionError(errno.EACCES, "Permission denied", src)
        real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(reproduce.os, "replace", replace)
        with pytest.raises(SystemExit) as e:
            reproduce.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == f"reproduce.sh: error: cannot set aside {link / 'log.jsonl'}: Permission denied"
    assert (link / "log.jsonl").read_bytes() == kept
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert f"4+2x3/seed0/task1/l100-{plans.OURS}: finished, but it stopped at {target - 10}" in out, out
    assert json.loads(open(link / "log.jsonl").readline())["stop_at_acc"] == target
    # a log from before the old model's hash and the target were recorded, its scratch run trained again (its old
    # model not): nothing tells the two targets apart, and the message names the run that trained again
    edit_log(link / "log.jsonl", header=lambda h: without(without(h, "stop_at_acc"), "old_weights_sha256"))
    (scratch / "log.jsonl").unlink()
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert (f"4+2x3/seed0/task1/l100-{plans.OURS}: finished, but its log does not record the accuracy it stopped "
            f"at, and {scratch} was trained again; training it again") in out, out
    assert json.loads(open(link / "log.jsonl").readline())["stop_at_acc"] == target
    # the scratch run's summary edited by hand: one line naming its log, from the driver and from a report, before
    # the link is set aside (it was a KeyError traceback, or a link set aside that train.py then refused to start),
    # also when the link's old model changed too (found first, it had the link set aside)
    for old_hash in (None, "another"):
        if old_hash:
            edit_log(link / "log.jsonl", header=lambda h: {**h, "old_weights_sha256": old_hash})
        kept = (link / "log.jsonl").read_bytes()
        for bad in (lambda s: {**s, "max_acc": float("nan")}, lambda s: without(s, "max_acc")):
            edit_log(scratch / "log.jsonl", summary=bad)
            for extra in ([], ["--report-only"]):
                with pytest.raises(SystemExit) as e:
                    reproduce.main(argv + extra)
                err = capsys.readouterr().err.strip()
                assert e.value.code == 2 and len(err.splitlines()) == 1, err
                assert f"{scratch / 'log.jsonl'}: its summary has max_acc = " in err, err
                assert (link / "log.jsonl").read_bytes() == kept and not (link / "log.jsonl.stale").exists(), extra


def test_an_l100_link_trained_again_for_its_target_gets_the_checkpoint_it_starts_from(root, capsys, monkeypatch):
    """Logs carried alone (no ckpt.pt), a link that stopped at another maximum than its scratch run's now: it
    trains again, so the link before it trains again first for the ckpt.pt it starts from, and so on down to the
    old model; the link after it may train. The up-front space check counts these 4 runs of the seed's 7."""
    run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "1", "--chain-stop", "l100")
    runs = root / "runs_l100_logs"
    shutil.copytree(root / "runs" / "4+2x3", runs / "4+2x3")
    for ckpt_pt in runs.rglob("ckpt.pt"):
        ckpt_pt.unlink()
    seed = runs / "4+2x3" / "seed0"
    link = seed / "task2" / f"l100-{plans.OURS}"
    target = max(e["acc"] for e in curves(seed / "task2" / "scratch"))
    edit_log(link / "log.jsonl", header=lambda h: {**h, "stop_at_acc": target - 10})
    argv = common(root, "runs_l100_logs", "res_l100_logs") + ["--plan", "fig6", "--split", "4+2x3", "--seeds", "1",
                                                               "--chain-stop", "l100"]
    usage = shutil.disk_usage(root)
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2 ** 20))
        with pytest.raises(SystemExit):
            reproduce.main(argv)
    err = capsys.readouterr().err
    assert "the 4 runs it may train" in err, err
    set_aside, real = {}, reproduce.run_inprocess

    def read_set_aside(argv, out):  # as the link trains again: its log set aside, read before the mark goes
        if argv[argv.index("--out") + 1] == str(link):
            set_aside["header"] = json.loads(open(link / "log.jsonl.stale").readline())
        return real(argv, out)

    monkeypatch.setattr(reproduce, "run_inprocess", read_set_aside)
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    for name in ("old", f"task1/l100-{plans.OURS}"):
        assert f"4+2x3/seed0/{name}: finished, but the ckpt.pt that later runs start from is gone" in out, out
        assert (seed / name / "ckpt.pt").is_file()
    # its own ckpt.pt gone too, but it is trained again for its target (the reason given), its log set aside
    assert f"4+2x3/seed0/task2/l100-{plans.OURS}: finished, but it stopped at {target - 10}, " in out, out
    assert set_aside["header"]["stop_at_acc"] == target - 10 and not (link / "log.jsonl.stale").exists()
    assert json.loads(open(link / "log.jsonl").readline())["stop_at_acc"] == target
    assert any(f"4+2x3/seed0/task3/l100-{plans.OURS} " in line and "kept: the runs it depends on" in line
               for line in out.splitlines()), out
    assert "0 failed" in out, out


def test_a_chain_whose_link_fails_after_its_old_model_trained_again_leaves_no_link_finished(root, capsys, monkeypatch):
    """Logs carried alone, the old model's lost: the old model trains again, to other weights (as on a GPU), and
    task 1's link, trained again from it, fails. The links after it cannot run; none of the seed's links is left
    finished from the previous old model for a table to take (they were: the first two trained again with their
    finished logs kept until replaced, the third kept as it ran), and the driver ends with its count, not
    'unsatisfiable dependencies'. The next driver trains the chain from the new old model."""
    run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "2")
    runs = root / "runs_link_fails"
    shutil.copytree(root / "runs" / "4+2x3", runs / "4+2x3")
    seed = runs / "4+2x3" / "seed0"
    for ckpt_pt in seed.rglob("ckpt.pt"):
        ckpt_pt.unlink()
    (seed / "old" / "log.jsonl").unlink()
    links = [seed / f"task{t}" / f"schedule-{plans.OURS}" for t in (1, 2, 3)]
    real = reproduce.run_inprocess
    monkeypatch.setattr(reproduce, "run_inprocess", gpu_like(real, fails=lambda to: to == str(links[0]),
                                                             after={str(seed / "old"): lambda: perturb(seed / "old")}))
    argv = common(root, runs.name, "res_link_fails") + ["--plan", "fig6", "--split", "4+2x3", "--seeds", "2"]
    assert reproduce.main(argv) == 1
    out = capsys.readouterr().out
    assert "3 failed" in out and out.count("skipped: a run it needs failed") == 2, out
    for link in links:
        assert not runlog.is_finished(link) and (link / "log.jsonl.stale").is_file(), link
    assert reproduce.main(argv + ["--report-only"]) == 0  # nothing of the previous lineage to refuse
    monkeypatch.setattr(reproduce, "run_inprocess", real)
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out, out
    for link, before in zip(links, [seed / "old"] + links):
        recorded = json.loads(open(link / "log.jsonl").readline())["old_weights_sha256"]
        assert recorded == weights_hash(torch.load(before / "ckpt.pt", weights_only=True)), link
        assert not (link / "log.jsonl.stale").exists(), link  # trained since: the mark is gone
    # task 1's log lost later and its training failing: nothing the links after it start from changed, so they
    # stay finished (an old mark read as 'set aside and not trained since' set them aside)
    (links[0] / "log.jsonl").unlink()
    kept = {p: p.read_bytes() for p in seed.rglob("log.jsonl")}
    monkeypatch.setattr(reproduce, "run_inprocess", lambda argv, out: False)
    assert reproduce.main(argv) == 1
    assert {p: p.read_bytes() for p in kept} == kept and not list(seed.rglob("log.jsonl.stale"))
    capsys.readouterr()


def test_an_l100_link_whose_link_before_fails_waits_for_its_scratch_run(root, capsys, monkeypatch):
    """--chain-stop l100, task 1's link and task 2's scratch run unfinished: task 1's link fails, so task 2's
    link (finished) is skipped; it is judged only once its scratch run, which it also depends on, is final. That
    trains again to another maximum (as on a GPU): the link is set aside, not left finished from the previous
    maximum (it was kept, found unchanged while its scratch run was still to train), nor the link after it."""
    run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "1", "--chain-stop", "l100")
    seed = root / "runs_l100_skip" / "4+2x3" / "seed0"
    shutil.copytree(root / "runs" / "4+2x3" / "seed0", seed)
    links = [seed / f"task{t}" / f"l100-{plans.OURS}" for t in (1, 2, 3)]
    scratch = seed / "task2" / "scratch"
    for d in (links[0], scratch):
        (d / "log.jsonl").unlink()
    lower = {str(scratch): lambda: edit_log(scratch / "log.jsonl",
                                            summary=lambda s: {**s, "max_acc": s["max_acc"] - 5})}
    monkeypatch.setattr(reproduce, "run_inprocess",
                        gpu_like(reproduce.run_inprocess, fails=lambda to: to == str(links[0]), after=lower))
    argv = common(root, "runs_l100_skip", "res_l100_skip") + ["--plan", "fig6", "--split", "4+2x3", "--seeds", "1",
                                                               "--chain-stop", "l100"]
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reproduce.main(argv) == 1
    assert not caught, [str(w.message) for w in caught]  # Fig. 6 with no task complete: an empty figure, quietly
    out = capsys.readouterr().out
    assert out.index("task2/scratch ") < out.index(f"task2/l100-{plans.OURS}: finished, but it stopped at"), out
    for link in links:
        assert not runlog.is_finished(link) and not (link / "log.jsonl").exists(), link
    assert [(link / "log.jsonl.stale").is_file() for link in links] == [False, True, True]
    set_aside = [line for line in out.splitlines() if f"/l100-{plans.OURS}: finished, but " in line]
    assert [line.split(": finished")[0] for line in set_aside] == [f"4+2x3/seed0/task{t}/l100-{plans.OURS}"
                                                                   for t in (2, 3)], out
    for line, link in zip(set_aside, links[1:]):  # skipped: set aside, not said to be trained again
        assert line.endswith(f"; left to train next time (its log is now {link / 'log.jsonl.stale'})"), line
    assert f": finished, but {links[1]} was set aside to be trained again;" in set_aside[1], set_aside
    assert reproduce.main(argv + ["--report-only"]) == 0  # nothing left of the previous maximum to refuse


def test_a_chain_whose_old_model_fails_to_train_again_keeps_its_links(root, capsys, monkeypatch):
    """Logs carried alone, task 3's link unfinished: the old model and the links before it train again for the
    ckpt.pt that task 3 starts from. If the old model's training fails, or is stopped, nothing the links depend on
    changed: they stay finished, their logs as they were (not set aside before it was known)."""
    run_plan(root, "fig6", "--split", "4+2x3", "--seeds", "2")
    seed = root / "runs_old_fails" / "4+2x3" / "seed0"
    shutil.copytree(root / "runs" / "4+2x3" / "seed0", seed)
    for ckpt_pt in seed.rglob("ckpt.pt"):
        ckpt_pt.unlink()
    (seed / "task3" / f"schedule-{plans.OURS}" / "log.jsonl").unlink()
    kept = {p: p.read_bytes() for p in seed.rglob("log.jsonl")}
    argv = common(root, "runs_old_fails", "res_old_fails") + ["--plan", "fig6", "--split", "4+2x3", "--seeds", "1"]
    fig6 = plans.PLANS["fig6"]
    monkeypatch.setitem(plans.PLANS, "fig6", lambda *a: fig6(*a)[::-1])  # no link starts before the old model
    tried = []

    def fail(argv, out):
        tried.append(argv[argv.index("--out") + 1])
        return False

    def stop(argv, out):
        tried.append(argv[argv.index("--out") + 1])
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(reproduce, "run_inprocess", fail)
        assert reproduce.main(argv) == 1
    out = capsys.readouterr().out
    assert tried == [str(seed / "old")], tried  # trained again first; the links it frees are skipped
    assert "4+2x3/seed0/old: finished, but the ckpt.pt that later runs start from is gone" in out, out
    assert out.count("the ckpt.pt that later runs start from is gone") == 1, out  # the links it frees: skipped
    assert {p: p.read_bytes() for p in kept} == kept and not list(seed.rglob("log.jsonl.stale"))
    with monkeypatch.context() as m:
        m.setattr(reproduce, "run_inprocess", stop)
        with pytest.raises(SystemExit, match="interrupted; finished runs are kept"):
            reproduce.main(argv)
    assert tried == [str(seed / "old")] * 2, tried
    assert {p: p.read_bytes() for p in kept} == kept and not list(seed.rglob("log.jsonl.stale"))
    capsys.readouterr()


def test_appendix(root):
    run_plan(root, "appendix", "--split", "6+4", "--seeds", "1")
    rows = list(csv.DictReader(open(root / "res" / "appendix.csv")))
    expected = [(sweep, name) for sweep, (_, rs) in plans.APPENDIX.items() for name, _ in rs]
    assert [(r["section"], r["row"]) for r in rows] == expected
    d = root / "runs" / "6+4" / "seed0"
    for r in rows:
        check_row(r, [d / r["label"]], [d / "scratch"])
    # the sweeps really vary the hyper-parameter they name
    h = json.loads(open(d / "continuous+init+alpha=0.1" / "log.jsonl").readline())
    assert h["config"]["sp_alpha"] == 0.1 and h["config"]["init"] == "shrink_perturb"
    h = json.loads(open(d / "scratch+data+r=0" / "log.jsonl").readline())
    assert h["config"]["eh_r"] == 0 and h["config"]["sampler"] == "easy_hard"
    for label in ("continuous+data+repl", plans.OURS + "+repl"):  # Sec. 3.3's sampler, with replacement
        h = json.loads(open(d / label / "log.jsonl").readline())
        assert h["config"]["replacement"] and h["config"]["sampler"] == "easy_hard"
    h = json.loads(open(d / plans.OURS / "log.jsonl").readline())
    assert not h["config"]["replacement"]
    for sweep in plans.APPENDIX:
        assert (root / "res" / f"appendix_{sweep}.png").exists()


def test_labels_map_to_flags():
    flags, reads = plans.flags_for("scratch+init+reg+data+x0.25+c=0.4", 1, "old.pt")
    assert reads and flags == ["--task", "1", "--init", "scratch", "--sp", "--reg", "l2init", "--sampler",
                               "easy_hard", "--schedule-scale", "0.25", "--eh-c", "0.4", "--old-ckpt", "old.pt"]
    flags, reads = plans.flags_for("scratch+multistep", 2, "old.pt")
    assert not reads and flags == ["--task", "2", "--init", "scratch", "--schedule", "multistep"]
    flags, reads = plans.flags_for(plans.OURS + "+repl", 1, "old.pt")
    assert reads and flags == ["--task", "1", "--init", "shrink_perturb", "--reg", "l2init", "--sampler",
                               "easy_hard", "--replacement", "--old-ckpt", "old.pt"]
    assert plans.paper_name("continuous+data+repl") == "Naive + easy / hard + with replacement"
    with pytest.raises(ValueError, match="unknown token"):
        plans.flags_for("continuous+bogus", 1, "x")


KEYS = ("label", "n", "max_acc", "max_acc_se", "L99", "L100")  # all but the timing columns


def test_parallel_workers_give_the_same_table(root, table2a):
    """--jobs-per-gpu 2 runs train.py in subprocesses, two at a time; same seeds, same numbers."""
    assert reproduce.main(common(root, "runs_par", "res_par") + TABLE2A + ["--jobs-per-gpu", "2"]) == 0
    second = list(csv.DictReader(open(root / "res_par" / "table2a_cifar10.csv")))
    assert [[r[k] for k in KEYS] for r in second] == [[r[k] for k in KEYS] for r in table2a]
    assert (root / "runs_par" / "8+2" / "seed1" / "old" / "train.out").exists()


def test_killed_driver_resumes_without_rerunning_finished_runs(root, table2a):
    """SIGKILL reproduce.sh part way, start it again: finished logs stay byte for byte, the table is the same."""
    import os
    import signal
    import subprocess
    import time

    from conftest import ROOT

    runs = root / "runs_kill"
    argv = common(root, "runs_kill", "res_kill") + TABLE2A
    proc = subprocess.Popen([os.path.join(ROOT, "reproduce.sh"), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(runs.glob("*/*/*/log.jsonl"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: p.read_bytes() for p in runs.glob("*/*/*/log.jsonl")}
    assert 3 <= len(finished) < 10
    assert reproduce.main(argv) == 0
    for p, b in finished.items():
        assert p.read_bytes() == b, p
    assert len(list(runs.glob("*/*/*/log.jsonl"))) == 10
    killed = list(csv.DictReader(open(root / "res_kill" / "table2a_cifar10.csv")))
    assert [[r[k] for k in KEYS] for r in killed] == [[r[k] for k in KEYS] for r in table2a]


def test_bad_split_is_one_error_before_any_run(root, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(common(root, "runs_bad", "res_bad") + ["--split", "8+4"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "reproduce.sh: error: split '8+4' needs 12 classes but the dataset has 10"
    assert not (root / "runs_bad").exists()
