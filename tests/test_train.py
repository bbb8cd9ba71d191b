"""train.py end to end on a tiny learnable dataset in the CIFAR-10 on-disk format (width-8 ResNet, CPU)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import cifar
import data as D
import step
import train
from conftest import ROOT, write_cifar
from resnet import resnet18
from sampler import unpack_bits

COMMON = ["--dataset", "cifar10", "--no-download", "--split", "6+4", "--width", "8", "--batch-size", "32",
          "--eval-every", "20", "--quiet", "--device", "cpu"]  # on a GPU machine too: fp32, deterministic


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """An old model (task 0) and, from it, task-1 runs: all four methods, naive, and scratch."""
    root = tmp_path_factory.mktemp("chain")
    write_cifar(root / "data", "cifar10", n_train=30, n_test=10)
    mp = pytest.MonkeyPatch()
    mp.setattr(cifar, "file_md5_is", lambda path, md5: os.path.isfile(path))  # conftest.no_checksum, module-wide

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


def test_the_space_check_counts_what_a_run_writes(chain, monkeypatch):
    """The need train.py gives the free-space check is at least what the run then left, ckpt.pt (with Adam's
    moments where it records a learning speed, without them where it does not) and log.jsonl, and above it by no
    more than the 1 MiB allowance for the log and pickling."""
    needs = []
    monkeypatch.setattr(train, "check_space", lambda path, need, *a: needs.append(need))
    old = str(chain["old"] / "ckpt.pt")
    for name, extra in (("space-old", ["--task", "0"]), ("space-off", ["--task", "0", "--learning-speed", "off"]),
                        ("space-ours", ["--task", "1", "--init", "shrink_perturb", "--old-ckpt", old, "--reg",
                                        "l2init", "--sampler", "easy_hard"])):
        out = chain["run"](name, *extra, iters=20)
        written = sum(os.path.getsize(out / f) for f in ("ckpt.pt", "log.jsonl"))
        assert written <= needs[-1] <= written + 2 ** 20, (name, written, needs[-1])
        # without the allowance, within 256 KiB of it (pickling, names, the log): a weight-sized copy left out or
        # counted twice (the anchor, one of Adam's moments: 700 KB at width 8) is noticed
        assert abs(needs[-1] - 2 ** 20 - written) < 2 ** 18, (name, written, needs[-1])
        assert (ckpt(out)["optimizer"] is None) == (name == "space-off")


def test_the_space_check_counts_the_per_example_arrays(tmp_path):
    """At CIFAR's size the learning speed and the example index outgrow the 1 MiB allowance (50,000 examples,
    100 epochs of bits: about 1.4 MB), so bytes_to_write must count them: it is at least what torch.save
    writes of them, above it by no more than the allowance, and without the allowance within 64 KiB of it: each
    array (the index, the two counts, the rows of bits) is counted at its size."""
    import io
    import types

    from ckpt import bytes_to_write
    from sampler import LearningSpeed

    n, lin = 50_000, torch.nn.Linear(2, 2)
    args = types.SimpleNamespace(learning_speed="off", batch_size=128)
    speed = LearningSpeed(n)
    for _ in range(39_100 * 128 // n):  # an epoch's end every n / 128 iterations
        speed.record_epoch(torch.rand(n) < 0.5)
    buf = io.BytesIO()
    init = {k: p.detach().clone() for k, p in lin.named_parameters()}
    torch.save({"model": lin.state_dict(), "init": init, "learning_speed": speed.state_dict(),
                "index": torch.arange(n)}, buf)
    need = bytes_to_write(args, lin, n, 39_100)
    assert buf.tell() <= need <= buf.tell() + 2 ** 20, (buf.tell(), need)
    assert abs(need - 2 ** 20 - buf.tell()) < 2 ** 16, (buf.tell(), need)


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
    # learning speed (Eq. 6, exact form): every example classified once per finished epoch, whatever the sampler
    # (old: 100*32 draws over 180 examples = 17 epochs; ours: 30*32 over 300 = 3; naive: 60*32 over 300 = 6),
    # and the counts are the column sums of the per-epoch bits
    for c, n, epochs in ((old, 180, 17), (ours, 300, 3), (ckpt(chain["naive"]), 300, 6)):
        ls = c["learning_speed"]
        bits = unpack_bits(ls["correct_by_epoch"], n)
        assert bits.shape == (epochs, n) and len(c["index"]) == n
        assert torch.equal(ls["seen"], torch.full((n,), float(epochs)))
        assert torch.equal(ls["correct"], bits.sum(0).float())
    assert ours["task"] == 1 and ours["groups"] == [6, 4] and ours["class_order"] == old["class_order"]


def test_logs_hold_the_promised_fields(chain):
    lines = read(chain["ours"])
    header, evals, summary = lines[0], lines[1:-1], lines[-1]
    assert header["event"] == "header" and summary["event"] == "summary"
    assert header["config"]["init"] == "shrink_perturb" and header["config"]["schedule_scale"] == 0.5
    assert len(header["class_order"]) == 10 and header["versions"]["torch"] == torch.__version__
    assert header["label"] == "shrink_perturb + l2init + easy_hard + x0.5"
    # x0.5 of 60 iterations: the run ends with its schedule, after 30
    assert [e["iter"] for e in evals] == [0, 20, 30] and header["planned_iters"] == summary["iters"] == 30
    for e in evals[1:]:
        for k in ("acc", "acc_old", "acc_new", "loss", "lr", "wall", "train_seconds", "images_per_s"):
            assert e[k] is not None, k
        assert 0 <= e["acc"] <= 100 and e["reg_loss"] > 0
    c = ckpt(chain["ours"])  # Eq. 5's penalty of the final model, from its checkpoint
    want = 0.01 * sum(float(((c["model"][k] - v) ** 2).sum()) for k, v in c["init"].items())
    assert evals[-1]["reg_loss"] == pytest.approx(want, rel=1e-4)
    assert all(e["reg_loss"] is None for e in read(chain["naive"])[1:-1])  # no --reg: no penalty to log
    accs = [e["acc"] for e in evals]
    assert summary["max_acc"] == max(accs) and summary["final_acc"] == accs[-1]
    assert accs[[e["iter"] for e in evals].index(summary["max_acc_iter"])] == max(accs)
    # the cosine schedule scaled by 0.5 is nearly at lr_min by its last iteration (29 of 30)
    assert evals[2]["lr"] == pytest.approx(1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * 29 / 30)) / 2)
    assert evals[1]["lr"] > 1e-5 and header["config"]["amp"] == "fp32"  # auto: fp32 on a CPU
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
                           "--old-ckpt", old, "--learning-speed", "online", iters=20))
    seen = rm["learning_speed"]["seen"]
    old_mask = torch.isin(rm["index"], ckpt(chain["old"])["index"])  # old examples: those the old model saw
    assert old_mask.sum() == 180 and seen[old_mask].sum() == 0 and seen[~old_mask].sum() == 20 * 32
    # old/new: exactly half of every batch is old, although old examples are 60% of the data
    on = ckpt(chain["run"]("oldnew", "--task", "1", "--sampler", "old_new", "--learning-speed", "online", iters=10))
    s = on["learning_speed"]["seen"]
    assert s[old_mask].sum() == s[~old_mask].sum() == 10 * 16


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
    partial = root / "partial.pt"
    torch.save({"model": {}, "init": {}}, partial)  # a checkpoint, but not train.py's
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
        (["--task", "1", "--init", "old", "--old-ckpt", str(partial)],
         "is not a train.py checkpoint (missing learning_speed, task, data, config, dataset, groups"),
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


def test_exact_learning_speed_is_the_models_prediction_at_each_epoch_end(chain, no_checksum):
    # 180 old-task images at batch 36: an epoch is 5 iterations, so 10 and 20 iterations end on epochs 2 and 4.
    # A constant learning rate, so that a row recorded a step early or late would differ from the right one
    train_set, _, _ = D.load_dataset("cifar10", str(chain["root"] / "data"), download=False)
    mean, std = D.channel_stats(train_set[0])
    bits = {}
    for iters in (10, 20):
        run = chain["run"](f"ls_exact{iters}", "--task", "0", "--batch-size", "36", "--lr-min", "1e-3", iters=iters)
        c = ckpt(run)
        bits[iters] = unpack_bits(c["learning_speed"]["correct_by_epoch"], 180)
        # the last row, recomputed independently: the final model on the unaugmented training images, eval mode
        x = train_set[0][c["index"]]
        y = D.task_data(train_set, train_set, [6, 4], c["class_order"], 0).y
        model = resnet18(6, width=8)
        model.load_state_dict(c["model"])
        pred = model.eval()(((x.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))).argmax(1)
        assert bits[iters].shape == (iters // 5, 180) and torch.equal(bits[iters][-1], pred == y)
        assert read(run)[-1]["learning_speed_seconds"] > 0  # the passes are timed, apart from training
    assert torch.equal(bits[20][:2], bits[10])  # epoch 2's row of the longer run is the model at iteration 10


def test_logged_training_loss_is_the_mean_over_each_interval(chain):
    # evaluation draws none of the training's random numbers, so the two runs train identically
    fine, coarse = ([e["loss"] for e in read(chain["run"](f"loss_every{k}", "--task", "0", "--learning-speed", "off",
                                                           "--eval-every", str(k), iters=6))[2:-1]]
                    for k in (1, 3))
    assert len(fine) == 6 and coarse == pytest.approx([sum(fine[:3]) / 3, sum(fine[3:]) / 3], rel=1e-5)


def test_stop_at_accuracy_of_a_reference_run(chain):
    target = read(chain["scratch"])[-1]["max_acc"]
    run = chain["run"]("stopper", "--task", "1", "--init", "old", "--old-ckpt", str(chain["old"] / "ckpt.pt"),
                       "--stop-at-acc-of", str(chain["scratch"]), "--eval-every", "5")
    lines = read(run)
    evals, summary = lines[1:-1], lines[-1]
    assert evals[-1]["acc"] >= target and all(e["acc"] < target for e in evals[:-1])
    assert summary["iters"] == evals[-1]["iter"] < 60
    assert ckpt(run)["summary"]["iters"] == summary["iters"]


def test_ends_epoch_by_hand():
    """10 images, batches of 4: the images seen after steps 0, 1, 2, ... are 4, 8, 12, 16, 20, 24, 28, 32, 36, 40,
    so the 1st, 2nd, 3rd and 4th epochs end at steps 2, 4, 7 and 9; a batch equal to the set ends one every step."""
    assert [it for it in range(10) if train.ends_epoch(it, 4, 10)] == [2, 4, 7, 9]
    assert all(train.ends_epoch(it, 10, 10) for it in range(5))
    assert [it for it in range(8) if train.ends_epoch(it, 3, 12)] == [3, 7]


def test_timed_eval_runs_in_eval_mode_and_returns_its_seconds():
    import time

    model = torch.nn.BatchNorm1d(2).train()

    def work():
        time.sleep(0.05)
        return model.training

    was_training, seconds = step.timed_eval(model, torch.device("cpu"), work)
    assert was_training is False and model.training and 0.05 <= seconds < 5


def test_run_length_follows_the_schedule_switch():
    p = train.build_parser()
    assert train.run_length(p.parse_args(["--iters", "1000", "--schedule-scale", "0.25"])) == 250
    assert train.run_length(p.parse_args(["--iters", "1000", "--schedule-scale", "0.25",
                                          "--no-stop-at-schedule-end"])) == 1000
    assert train.run_length(p.parse_args(["--iters", "10", "--schedule-scale", "0.33"])) == 4  # ceil(3.3)
    assert train.run_length(p.parse_args(["--iters", "1000"])) == 1000


def test_easy_hard_refuses_an_old_model_that_recorded_no_learning_speed(chain, capsys):
    off = chain["run"]("old_off", "--task", "0", "--learning-speed", "off", iters=10)
    assert ckpt(off)["learning_speed"]["seen"].sum() == 0 and read(off)[-1]["learning_speed_seconds"] == 0
    code = train.cli(COMMON + ["--data-dir", str(chain["root"] / "data"), "--iters", "10", "--task", "1",
                               "--sampler", "easy_hard", "--old-ckpt", str(off / "ckpt.pt"),
                               "--out", str(chain["root"] / "eh_off")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "recorded no learning speed" in err and len(err.splitlines()) == 1


def test_cuda_graph_falls_back_to_the_same_eager_step_on_a_cpu(chain):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    plain = chain["run"]("plain", "--task", "0", iters=6)
    graphed = chain["run"]("graphed", "--task", "0", "--cuda-graph", iters=6)
    header = read(graphed)[0]
    assert header["config"]["cuda_graph"] is False and header["config"]["amp"] == "fp32"
    a, b = ckpt(plain)["model"], ckpt(graphed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit the run without the flag


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_run_records_the_graphed_step_unless_told_not_to(chain):
    for name, flags, want in (("gpu_default", [], True), ("gpu_eager", ["--no-cuda-graph"], False)):
        header = read(chain["run"](name, "--task", "0", "--device", "cuda", *flags, iters=6))[0]
        assert header["config"]["cuda_graph"] is want and header["config"]["amp"] == "bf16"


@pytest.mark.parametrize("flags, cuda", [([], True), (["--compile"], False), (["--no-cuda-graph"], False),
                                         (["--cuda-graph"], True)])
def test_the_step_is_graphed_by_default_on_a_gpu_only(flags, cuda, capsys):
    # the device is only looked at, never used: a CPU-only machine can settle the arguments of a GPU run
    for dev, want in ((torch.device("cuda"), cuda), (torch.device("cpu"), False)):  # a CPU step is never graphed
        args = train.build_parser().parse_args(flags)
        train.settle_for_device(args, dev)
        assert args.cuda_graph is want
    said = capsys.readouterr().out
    assert ("--cuda-graph needs a GPU" in said) == ("--cuda-graph" in flags)  # only a flag asked for is refused


def _task1(chain, *extra):
    """args and load_task(args) of a task-1 run continuing the chain's old model (nothing trained)."""
    root = chain["root"]
    args = train.build_parser().parse_args(COMMON + ["--data-dir", str(root / "data"), "--task", "1", "--old-ckpt",
                                                     str(chain["old"] / "ckpt.pt"), "--out", str(root / "x"), *extra])
    train.settle_for_device(args, torch.device("cpu"))
    return args, train.load_task(args)


def test_starting_point_shrinks_and_perturbs_the_old_model(chain):
    """--init shrink_perturb is Eq. 4 on the continued model: 0.4 * old + 0.001 * (a fresh init), BatchNorm
    statistics reset; --init old is the old model itself."""
    args, task = _task1(chain, "--init", "old")
    naive, _ = train.starting_point(args, task)
    args, task = _task1(chain, "--init", "shrink_perturb")
    sp, _ = train.starting_point(args, task)
    fresh = dict(resnet18(10, 8).named_parameters())
    for name, p in sp.named_parameters():
        noise = (p - 0.4 * dict(naive.named_parameters())[name]).detach().norm()  # = 0.001 * ||fresh draw||
        if fresh[name].norm() > 0 and name != "fc.weight":  # fc's new rows differ between the two models
            assert 0.3e-3 < noise / fresh[name].norm() < 3e-3, name
    bn, bn_old = sp.bn1, naive.bn1
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))
    assert bn_old.running_mean.abs().sum() > 0  # the old model's statistics were not zero to start with


def test_scratch_with_sp_shrinks_and_perturbs_its_own_random_init(chain):
    """--init scratch --sp (Table 1's Scratch column): Eq. 4 on the seed's random init, which stays the anchor."""
    from shrink_perturb import fresh_copy

    args, task = _task1(chain, "--sp")
    model, anchor = train.starting_point(args, task)
    torch.manual_seed(args.seed)
    init = resnet18(task.d.num_classes, args.width, args.stem)
    noise = dict(fresh_copy(init).named_parameters())  # the draw that follows the init from the same seed
    for name, p in init.named_parameters():
        assert torch.equal(anchor[name], p), name
        assert torch.allclose(dict(model.named_parameters())[name], 0.4 * p + 0.001 * noise[name]), name


def test_objective_anchors_l2_at_zero_and_l2init_at_the_lineages_init(chain):
    args, task = _task1(chain, "--init", "old", "--reg", "l2init")
    model, anchor = train.starting_point(args, task)
    old_init = ckpt(chain["old"])["init"]
    params, anchors = train.objective(args, model, anchor)
    names = [n for n, _ in model.named_parameters()]
    assert len(params) == len(anchors) == len(names) and all(p is q for p, q in zip(params, model.parameters()))
    assert all(torch.equal(a, old_init[n]) for n, a in zip(names, anchors) if n not in ("fc.weight", "fc.bias"))
    args.reg = "l2"
    assert all(torch.equal(a, torch.zeros_like(a)) for a in train.objective(args, model, anchor)[1])
    args.reg = "none"
    assert train.objective(args, model, anchor) is None


def test_l2_init_pulls_the_trained_weights_towards_their_init(chain):
    """The penalty reaches the training step (not only the log): with a large lambda the weights stay closer
    to theta_0 than the same seed trained on the plain loss."""
    def distance(run):
        c = ckpt(run)
        return sum(((c["model"][n] - a) ** 2).sum() for n, a in c["init"].items())

    free = chain["run"]("l2free", "--task", "0", iters=20)
    held = chain["run"]("l2held", "--task", "0", "--reg", "l2init", "--reg-lambda", "100", iters=20)
    assert distance(held) < 0.5 * distance(free)
    assert read(free)[1]["reg_loss"] is None and read(held)[1]["reg_loss"] == 0  # iteration 0: theta = theta_0


def test_easy_hard_weights_follow_each_old_examples_own_learning_speed(chain, monkeypatch):
    """The old checkpoint's learning speed of example i (by its training-set index) is the one easy_hard_weights
    ranks for example i of this task: none is shifted onto another example."""
    seen = {}
    real = train.easy_hard_weights

    def spy(ls, is_old, c, r):
        seen["ls"], seen["is_old"] = ls.clone(), is_old.clone()
        return real(ls, is_old, c, r)

    monkeypatch.setattr(train, "easy_hard_weights", spy)
    args, task = _task1(chain, "--sampler", "easy_hard")
    train.batch_indices(args, task, torch.device("cpu"))
    old = ckpt(chain["old"])
    from sampler import LearningSpeed
    speed = LearningSpeed(len(old["index"]))
    speed.load_state_dict(old["learning_speed"])
    by_index = dict(zip(old["index"].tolist(), speed.value().tolist()))
    d = task.d
    expected = torch.tensor([by_index.get(i, float("nan")) for i in d.index.tolist()])
    assert torch.equal(seen["is_old"], d.is_old) and d.is_old.sum() == 180
    assert torch.allclose(seen["ls"], expected, equal_nan=True)
    assert len(set(expected[d.is_old].tolist())) > 1  # distinct speeds: a shifted assignment would show
