"""What feeds the tables besides Eq. 1-2: the training-seconds bookkeeping (every 'seconds' column), the logged
learning rates of the multistep schedule (App. A.6, Fig. 13), the default evaluation interval (the resolution of
L99 / L100), repro.table's refusal of runs on other data, Fig. 7's two verdicts, and the pixels of a resized
image folder."""
import json
import time

import numpy as np
import pytest
import torch

import analysis
import data as D
import train
from conftest import write_folder
from repro import reproduce, table
from repro.report import fig7_verdicts


def test_training_seconds_leave_out_evaluation_learning_speed_and_the_probe(tmp_path, monkeypatch):
    """A fake clock that only moves when told: each training step takes 1 s, each prediction pass (an evaluation
    or an epoch's learning-speed pass) 100 s, each gradient-norm probe 10,000 s. train_seconds must count the
    steps alone; the multistep schedule's learning rate is logged as App. A.6 defines it."""
    write_folder(tmp_path / "data", num_classes=4, n_train=4, n_test=2)
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def costs(seconds, fn):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            clock[0] += seconds
            return out
        return wrapped

    build_step = train.build_step

    def timed_build_step(*a, **k):
        step, loss_sum = build_step(*a, **k)
        return costs(1.0, step), loss_sum

    monkeypatch.setattr(train, "build_step", timed_build_step)
    monkeypatch.setattr(D, "predict", costs(100.0, D.predict))
    monkeypatch.setattr(analysis, "grad_norm_summary", costs(10000.0, analysis.grad_norm_summary))
    out = tmp_path / "run"
    # task 0 of 2+2: 8 training images, batch 4: an epoch (and a learning-speed pass) every 2 steps
    assert train.cli(["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--split", "2+2", "--task", "0",
                      "--width", "8", "--batch-size", "4", "--iters", "8", "--eval-every", "2", "--schedule",
                      "multistep", "--grad-norms", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in open(out / "log.jsonl")]
    evals = [x for x in lines if x["event"] == "eval"]
    probes = [x for x in lines if x["event"] == "grad_norms"]
    summary = lines[-1]
    assert [e["iter"] for e in evals] == [0, 2, 4, 6, 8]
    assert [e["train_seconds"] for e in evals] == [0, 2, 4, 6, 8]  # the steps' seconds, nothing else
    assert [e["images_per_s"] for e in evals[1:]] == [4.0] * 4  # 2 steps of 4 images in 2 s
    assert summary["train_seconds"] == 8 and summary["learning_speed_seconds"] == 4 * 100
    assert [p["seconds"] for p in probes] == [10000.0] * len(probes) and len(probes) >= 2
    # wall time holds everything after the first evaluation and probe: 8 steps, the evaluations at 2, 4 and 6
    # (the one at 8 comes after its wall time is taken), 4 learning-speed passes and the later probes
    later = sum(1 for p in probes if p["iter"] > 0)
    assert evals[-1]["wall"] == 8 + 3 * 100 + 4 * 100 + later * 10000
    # multistep (App. A.6) over T = 8: lr_max until 50% of T, /10 until 75%, /100 after; an evaluation after
    # iteration k logs the rate of the last step it covers (0-based k - 1)
    assert [e["lr"] for e in evals] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-5])


@pytest.mark.parametrize("iters, every", [(39100, 200), (19550, 100), (4000, 20), (293, 1), (100, 1), (1, 1)])
def test_default_evaluation_interval_scales_with_the_run(iters, every):
    """Eq. 1 is only known at evaluations: the default interval is 200 iterations per 39,100, rounded, at least
    1 (by hand: 4000 * 200 / 39100 = 20.46 -> 20; 293 -> 1.499 -> 1)."""
    args = reproduce.build_parser().parse_args(["--iters", str(iters)])
    reproduce.resolve(args)
    assert args.eval_every == every
    assert train.build_parser().parse_args([]).eval_every == 200  # train.py alone: the paper's full-length run


def test_speedup_refuses_runs_trained_on_different_data(tmp_path, capsys):
    def run(name, label, seed, sha):
        (tmp_path / name).mkdir()
        lines = [{"event": "header", "label": label, "group": {"label": label}, "config": {"seed": seed},
                  "data": {"class_names": ["a", "b"], "sha256": sha}},
                 {"event": "eval", "iter": 0, "acc": 50.0, "train_seconds": 0.0}, {"event": "summary"}]
        (tmp_path / name / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return str(tmp_path / name)

    same = [run("s", "scratch", 0, "aaa"), run("o", "ours", 0, "aaa")]
    assert table.main(same + ["--reference", "scratch"]) == 0
    capsys.readouterr()
    assert table.main(same + [run("x", "ours", 1, "bbb"), "--reference", "scratch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("were trained on different data") and "/x" in err[0]


def row(l99, max_acc, se):
    return {"L99": l99, "max_acc": max_acc, "max_acc_se": se}


@pytest.mark.parametrize("naive_l99, ours_l99, speed", [
    (None, 2.0, "not nearly as fast (it never gets there)"), (1.5, None, "faster (Ours never gets there)"),
    (2.0, 2.0, "as fast or faster"), (2.5, 2.0, "as fast or faster"), (1.4, 2.1, "nearly as fast"),  # 1.4 = 2/3
    (1.39, 2.1, "not nearly as fast")])
def test_fig7_speed_verdict(naive_l99, ours_l99, speed):
    assert fig7_verdicts(row(naive_l99, 70, 0), row(ours_l99, 70, 0))[0] == speed


def test_fig7_accuracy_verdict_needs_more_than_one_combined_standard_error():
    # combined s.e. hypot(0.3, 0.4) = 0.5: a gap of 0.6 is higher, 0.5 and less are not
    assert fig7_verdicts(row(2, 70.0, 0.3), row(2, 70.6, 0.4))[1:] == ("higher", pytest.approx(0.6), 0.5)
    assert fig7_verdicts(row(2, 70.0, 0.3), row(2, 70.5, 0.4))[1] == "not higher"
    assert fig7_verdicts(row(2, 71.0, 0.3), row(2, 70.0, 0.4))[1] == "not higher"


def test_folder_images_are_resized_as_pil_does(tmp_path):
    """folder.load_folder: each image converted to RGB and resized whole to S x S with PIL's bilinear filter."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for k in range(n):
            (tmp_path / split / "c0").mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)  # not square: squashed to 24 x 24
            Image.fromarray(img).save(tmp_path / split / "c0" / f"{k}.png")
    (tx, _), (vx, _), _ = D.load_dataset("folder", str(tmp_path), image_size=24)
    for x, split, n in ((tx, "train", 2), (vx, "test", 1)):
        for k in range(n):
            with Image.open(tmp_path / split / "c0" / f"{k}.png") as im:
                want = np.array(im.convert("RGB").resize((24, 24), Image.BILINEAR))  # a writable copy
            assert torch.equal(x[k], torch.from_numpy(want).permute(2, 0, 1)), (split, k)
