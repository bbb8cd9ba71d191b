"""train.py end to end on a tiny learnable dataset in the CIFAR-10 on-disk format (width-8 ResNet, CPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT, write_cifar
from resnet import resnet18

COMMON = ["--dataset", "cifar10", "--no-download", "--split", "6+4", "--width", "8", "--batch-size", "32",
          "--eval-every", "20", "--quiet"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """An old model (task 0) and, from it, task-1 runs: all four methods, naive, and scratch."""
    root = tmp_path_factory.mktemp("chain")
    write_cifar(root / "data", "cifar10", n_train=30, n_test=10)
    mp = pytest.MonkeyPatch()
    import torchvision.datasets.cifar as cifar

    mp.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))

    def run(name, *extra, iters=60):
        args = train.build_parser().parse_args(COMMON + ["--data-dir", str(root / "data"), "--iters", str(iters),
                                                         "--out", str(root / name), *extra])
        train.main(args)
        return root / name

    runs = {"root": root, "run": run}
    runs["old"] = run("old", "--task", "0", iters=100)
    old = str(runs["old"] / "ckpt.pt")
    runs["ours"] = run("ours", "--task", "1", "--init", "shrink_perturb", "--old-ckpt", old, "--reg", "l2init",
                       "--sampler", "easy_hard", "--schedule-scale", "0.5")
    runs["naive"] = run("naive", "--task", "1", "--init", "old", "--old-ckpt", old)
    runs["scratch"] = run("scratch", "--task", "1")
    yield runs
    mp.undo()


def read(run_dir):
    with open(run_dir / "log.jsonl") as f:
        return [json.loads(line) for line in f]


def ckpt(run_dir):
    return torch.load(run_dir / "ckpt.pt", weights_only=True)


def test_checkpoints_of_the_chain(chain):
    old, ours = ckpt(chain["old"]), ckpt(chain["ours"])
    # the head grows from the 6 old classes to all 10
    assert old["model"]["fc.weight"].shape == (6, 64) and ours["model"]["fc.weight"].shape == (10, 64)
    # the old run's anchor is its real random init (recomputed independently from the seed) ...
    torch.manual_seed(0)
    fresh = dict(resnet18(6, width=8).named_parameters())
    assert all(torch.equal(old["init"][n], p.detach()) for n, p in fresh.items())
    # ... and the continued run's anchor is the old run's init, plus fresh rows for the new classes
    for n, t in old["init"].items():
        a = ours["init"][n]
        assert torch.equal(a[:6] if n.startswith("fc.") else a, t), n
    assert ours["init"]["fc.weight"].shape == (10, 64)
    assert not torch.equal(ours["init"]["fc.weight"][6:], torch.zeros(4, 64))
    # learning speed: one value per training example, in [0, 1]; under uniform sampling every example is seen
    # once an epoch (old: 100*32 draws over 180 examples; naive: 60*32 over 300)
    for c, n, uniform in ((old, 180, True), (ours, 300, False), (ckpt(chain["naive"]), 300, True)):
        seen, correct = c["learning_speed"]["seen"], c["learning_speed"]["correct"]
        assert seen.shape == (n,) and (correct <= seen).all() and (correct >= 0).all() and len(c["index"]) == n
        if uniform:
            epochs = c["config"]["iters"] * 32 // n
            assert seen.min() >= epochs and seen.max() <= epochs + 1
    assert ours["task"] == 1 and ours["groups"] == [6, 4] and ours["class_order"] == old["class_order"]


def test_logs_hold_the_promised_fields(chain):
    lines = read(chain["ours"])
    header, evals, summary = lines[0], lines[1:-1], lines[-1]
    assert header["event"] == "header" and summary["event"] == "summary"
    assert header["config"]["init"] == "shrink_perturb" and header["config"]["schedule_scale"] == 0.5
    assert len(header["class_order"]) == 10 and header["versions"]["torch"] == torch.__version__
    assert header["label"] == "shrink_perturb + l2init + easy_hard + x0.5"
    assert [e["iter"] for e in evals] == [0, 20, 40, 60]
    for e in evals[1:]:
        for k in ("acc", "acc_old", "acc_new", "loss", "lr", "wall", "train_seconds", "images_per_s"):
            assert e[k] is not None, k
        assert 0 <= e["acc"] <= 100 and e["reg_loss"] > 0
    accs = [e["acc"] for e in evals]
    assert summary["max_acc"] == max(accs) and summary["final_acc"] == accs[-1]
    assert accs[[e["iter"] for e in evals].index(summary["max_acc_iter"])] == max(accs)
    # a schedule scaled by 0.5 is at lr_min from iteration 30 on
    assert evals[2]["lr"] == pytest.approx(1e-6) and evals[1]["lr"] > 1e-5
    # accuracy on all classes is the test-size-weighted mean of old and new (6 and 4 classes, 10 images each)
    e = evals[-1]
    assert e["acc"] == pytest.approx((6 * e["acc_old"] + 4 * e["acc_new"]) / 10)


def test_continued_run_starts_from_the_old_weights(chain):
    old_final = read(chain["old"])[-2]["acc"]
    naive0, scratch0 = read(chain["naive"])[1], read(chain["scratch"])[1]
    assert naive0["iter"] == 0 and old_final > 80
    assert naive0["acc_old"] > 60  # chance is 1/6 on the old classes
    assert naive0["acc_new"] == 0  # the new head rows are untrained and lose to the old ones
    assert scratch0["acc"] < 40  # a random init is near chance (10%)


def test_easy_hard_removal_and_old_new_reach_the_sampler(chain):
    old = str(chain["old"] / "ckpt.pt")
    # c=1, r=0: every old example is removed, so the run never trains on one
    rm = ckpt(chain["run"]("removed", "--task", "1", "--sampler", "easy_hard", "--eh-c", "1", "--eh-r", "0",
                           "--old-ckpt", old, iters=20))
    seen = rm["learning_speed"]["seen"]
    old_mask = torch.isin(rm["index"], ckpt(chain["old"])["index"])  # old examples: those the old model saw
    assert old_mask.sum() == 180 and seen[old_mask].sum() == 0 and seen[~old_mask].sum() == 20 * 32
    # old/new: both halves of the probability mass, although old examples are 60% of the data
    on = ckpt(chain["run"]("oldnew", "--task", "1", "--sampler", "old_new", iters=100))
    s = on["learning_speed"]["seen"]
    frac_old = float(s[old_mask].sum() / s.sum())
    assert abs(frac_old - 0.5) < 0.05


def test_refuses_to_overwrite_a_finished_run(chain, capsys):
    log_before = (chain["scratch"] / "log.jsonl").read_bytes()
    code = train.cli(COMMON + ["--data-dir", str(chain["root"] / "data"), "--iters", "20", "--task", "1",
                               "--out", str(chain["scratch"])])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a finished run" in err and len(err.strip().splitlines()) == 1
    assert (chain["scratch"] / "log.jsonl").read_bytes() == log_before


def _bad_inputs(root):
    data, old = str(root / "data"), str(root / "old" / "ckpt.pt")
    garbage = root / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    other = str(root / "other_split_old")
    base = COMMON + ["--data-dir", data, "--iters", "20"]
    return [
        (["--dataset", "mnist"], "unknown dataset"),
        (["--split", "6+x"], "cannot read"),
        (["--split", "6+6"], "needs 12 classes"),
        (["--task", "2"], "out of range"),
        (["--task", "1", "--init", "old"], "needs --old-ckpt"),
        (["--task", "1", "--init", "old", "--old-ckpt", str(root / "nope.pt")], "not found"),
        (["--task", "1", "--init", "old", "--old-ckpt", str(garbage)], "cannot read checkpoint"),
        (["--task", "1", "--init", "old", "--old-ckpt", old, "--split-seed", "3"], "different class order"),
        (["--task", "1", "--init", "old", "--old-ckpt", old, "--split", "6+2+2"], "different groups"),
        (["--task", "2", "--split", "6+2+2", "--init", "old", "--old-ckpt", old], "different groups"),
        (["--task", "1", "--init", "old", "--old-ckpt", old, "--width", "16"], "different width"),
        (["--task", "1", "--sampler", "easy_hard"], "easy_hard needs --old-ckpt"),
        (["--task", "0", "--sampler", "easy_hard"], "needs --task >= 1"),
        (["--sp-alpha", "1.5"], "--sp-alpha"),
        (["--reg-lambda", "-1"], "--reg-lambda"),
        (["--schedule-scale", "0"], "--schedule-scale"),
        (["--iters", "0"], "--iters"),
        (["--init", "bogus"], "invalid choice"),
        (["--data-dir", str(root / "empty")], "cifar10"),
    ], base, other


def test_bad_inputs_exit_2_with_one_line(chain, capsys):
    cases, base, _ = _bad_inputs(chain["root"])
    for extra, msg in cases:
        out = str(chain["root"] / "bad")
        try:
            code = train.cli(base + ["--out", out] + extra)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2, (extra, err)
        assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err, (extra, err)
        assert not os.path.exists(os.path.join(out, "log.jsonl")), extra


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--task", "1", "--init", "old",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "train.py: error: --init old needs --old-ckpt (the task-1 checkpoint)"


def test_nan_loss_stops_with_a_readable_log(chain, capsys):
    out = chain["root"] / "nan"
    code = train.cli(COMMON + ["--data-dir", str(chain["root"] / "data"), "--iters", "40", "--task", "0",
                               "--lr", "1e30", "--lr-min", "1e30", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "loss became" in err and len(err.splitlines()) == 1
    assert not (out / "log.jsonl").exists() and not (out / "ckpt.pt").exists()  # nothing looks finished
    lines = [json.loads(x) for x in (out / "log.jsonl.part").read_text().splitlines()]
    assert lines[0]["event"] == "header" and lines[-1]["event"] == "error"
