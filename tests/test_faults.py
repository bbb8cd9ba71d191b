"""Faults and bad input: every bad input is one line on stderr and exit code 2, with nothing written; a killed
driver takes its workers with it and a rerun finishes the table without touching a finished run; a run folder
belongs to one process; runs of two datasets are never mixed."""
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import data as D
import ckpt
import runlog
import step
import train
from conftest import ROOT, edit_log, gpu_like, perturb, synthetic_images, without, write_folder
from repro import reproduce, table

TRAIN = ["--dataset", "folder", "--split", "2+2", "--width", "8", "--batch-size", "8", "--iters", "4",
         "--eval-every", "4", "--no-download", "--quiet", "--device", "cpu"]


def tree_hash(root):
    """{relative path: sha256} of every file under root but the decoded-image caches (a load may add one)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if not f.startswith(".decoded-"):
                p = os.path.join(d, f)
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def disk_with_room(monkeypatch, module, room, modes="w"):
    """module's open() for writing (a mode with one of `modes`: "w+" also fakes "a+", the lock file's) puts its
    files on a disk with `room` bytes left: the raw write that would pass it fails with ENOSPC, as the kernel's
    does, after the buffered layers above it (if any) have taken the bytes."""
    left = [room]

    class Filling(io.FileIO):
        def write(self, b):
            n = min(len(b), left[0])
            if n == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= n
            return super().write(bytes(b[:n]))

    def fake_open(path, mode="r", buffering=-1, **k):
        if not any(m in mode for m in modes):
            return open(path, mode, buffering, **k)
        raw = Filling(path, mode.replace("b", "").replace("t", ""))
        if buffering == 0:
            return raw
        buffered = (io.BufferedRandom if "+" in mode else io.BufferedWriter)(raw)
        return buffered if "b" in mode else io.TextIOWrapper(buffered)

    monkeypatch.setattr(module, "open", fake_open, raising=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two 4-class image folders named 'syn' with the same class names but other images, an old model on
    the first, a data folder with an empty class and one with a truncated image."""
    root = tmp_path_factory.mktemp("faults")
    write_folder(root / "a" / "syn", num_classes=4, n_train=8, n_test=2)
    write_folder(root / "b" / "syn", num_classes=4, n_train=8, n_test=2, seed=7)
    write_folder(root / "empty", num_classes=4, n_train=8, n_test=2)
    for f in (root / "empty" / "train" / "c3").iterdir():
        f.unlink()
    write_folder(root / "trunc", num_classes=4, n_train=8, n_test=2)
    bad = root / "trunc" / "train" / "c1" / "0009.png"
    bad.write_bytes(bad.read_bytes()[:60])
    assert train.cli(TRAIN + ["--data-dir", str(root / "a" / "syn"), "--out", str(root / "old")]) == 0
    (root / "afile").write_text("a file, not a folder")
    for k, img in enumerate(synthetic_images(np.arange(4), 4, 0, 32)):  # one image per class, no train/ and test/:
        os.makedirs(root / "single" / "syn" / f"c{k}")  # folder.seeded_split leaves no class a test image
        Image.fromarray(img).save(root / "single" / "syn" / f"c{k}" / "0000.png")
    return root


def bad_train_inputs(root):
    a, b, old = str(root / "a" / "syn"), str(root / "b" / "syn"), str(root / "old" / "ckpt.pt")
    cont = ["--task", "1", "--init", "old", "--old-ckpt", old]
    cases = [
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--lr", "nan"], "--lr must be a finite number"),
        (["--sp-beta", "inf"], "--sp-beta must be a finite number"),
        (["--reg-lambda", "inf"], "--reg-lambda must be a finite number"),
        (["--eh-r", "inf"], "--eh-r must be a finite number"),
        (["--sp-alpha", "nan"], "--sp-alpha must be a finite number in [0, 1]"),
        (["--schedule-scale", "inf"], "--schedule-scale must be a finite number > 0"),
        (["--eval-every", "0"], "--eval-every must be > 0"),
        (["--seed", str(2 ** 63)], "--seed must be in [0, 2^63)"),
        (["--split-seed", "-1"], "--split-seed must be in [0, 2^63)"),
        (["--out", str(root / "afile" / "x")], "is a file"),
        (["--out", str(root / "afile")], "exists and is not a folder"),
        (["--out", ""], "--out is empty"),
        (["--split", "9+9"], "needs 18 classes"),
        (["--split", "4", "--task", "1"], "out of range"),
        (["--batch-size", "17"], "larger than task 0's training data (16 examples)"),
        (["--data-dir", str(root / "single" / "syn"), "--batch-size", "2"],
         "task 0's classes have no test images: nothing to evaluate on"),
        (["--data-dir", str(root / "empty")], "holds no images"),
        (["--data-dir", str(root / "trunc")], "0009.png"),
        (["--data-dir", str(root / "trunc"), "--split", "9+9"], "needs 18 classes"),  # before any decoding
        (cont + ["--image-size", "16"], "different image size"),
        (cont + ["--data-dir", b], "trained on other data (sha256 not the same)"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--out", str(root / "old")], "already holds a finished run"),
        (["--batch-size", "1"], "--batch-size must be >= 2 (BatchNorm needs 2 values per channel)"),
        (["--width", "100000"], "training needs at least"),  # before the data is decoded
        (["--image-size", "100000"], "training needs at least"),
        (["--task", "1", "--init", "old", "--old-ckpt", str(root / "old")],
         f"--old-ckpt {root / 'old'} is a folder: give the checkpoint in it, {old}"),
        *[(["--stop-at-acc-of", str(root / f"edited-{name}")],
           f"edited-{name}/log.jsonl: its summary has max_acc = {v}") for name, v in EDITED_MAX_ACC.items()],
        (["--stop-at-acc-of", str(root / "a")], f"--stop-at-acc-of {root / 'a'}: no finished run there"),
    ]
    return [(["--data-dir", a] + extra if "--data-dir" not in extra else extra, msg) for extra, msg in cases]


# a finished run whose summary was edited by hand: its max_acc as JSON writes each (NaN, Infinity, true)
EDITED_MAX_ACC = {"high": "high", "nan": float("nan"), "inf": float("inf"), "true": True}


def test_bad_train_inputs_exit_2_with_one_line_and_write_nothing(world, capsys):
    for name, v in EDITED_MAX_ACC.items():
        if not (world / f"edited-{name}").exists():
            shutil.copytree(world / "old", world / f"edited-{name}")
            edit_log(world / f"edited-{name}" / "log.jsonl", summary=lambda x, v=v: {**x, "max_acc": v})
    for extra, msg in bad_train_inputs(world):
        out = ["--out", str(world / "bad")] if "--out" not in extra else []
        before = tree_hash(world)
        code = train.cli(TRAIN + out + extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and msg in err and len(err.splitlines()) == 1, (extra, err)
        assert tree_hash(world) == before, extra
        assert not (world / "bad").exists(), extra
    # the seeds' bound is 2^63 itself: the largest seed below it trains (train.py seeds a generator with it + 1)
    top = ["--seed", str(2 ** 63 - 1), "--split-seed", str(2 ** 63 - 1)]
    assert train.cli(TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(world / "top-seed")] + top) == 0
    assert runlog.is_finished(world / "top-seed")


def test_no_traceback_from_the_command_line(world):
    for extra in (["--eh-r", "inf"], ["--out", str(world / "afile" / "x")]):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *TRAIN, "--data-dir",
                            str(world / "a" / "syn"), *extra], capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("train.py: error: ")


def hold_lock(folder, pid=b"12345"):
    """The lock of a live process on folder/.lock (returns the open file; closing it releases the lock)."""
    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, ".lock"), "wb")
    f.write(pid)
    f.flush()
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def record_opens(monkeypatch):
    """The files runlog opens, in order."""
    opened = []
    monkeypatch.setattr(runlog, "open", lambda *a, **k: opened.append(open(*a, **k)) or opened[-1], raising=False)
    return opened


def test_a_run_folder_belongs_to_one_process(world, capsys):
    argv = TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(world / "locked")]
    with hold_lock(world / "locked"):  # as a live train.py holds it
        assert train.cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"train.py: error: {world / 'locked'} is in use by another training process (pid 12345)"
    assert not (world / "locked" / "log.jsonl.part").exists()
    # the lock file of a dead process (nobody holds it) is taken over, and removed when the run ends
    assert train.cli(argv) == 0 and runlog.is_finished(world / "locked")
    assert sorted(os.listdir(world / "locked")) == ["ckpt.pt", "log.jsonl"]


def test_a_held_lock_is_one_line_and_closes_the_file_it_read(tmp_path, monkeypatch):
    """A live holder's .lock, even one that does not decode (written by hand, or by another tool): the usual one
    line, the bytes it cannot read replaced (it was a UnicodeDecodeError traceback); the file opened to read it
    is closed, not left open until the garbage collector finds it."""
    opened = record_opens(monkeypatch)
    with hold_lock(tmp_path / "run", pid=b"\xff12"), pytest.raises(runlog.UsageError) as e:
        runlog.lock_run(str(tmp_path / "run"))
    assert str(e.value) == f"{tmp_path / 'run'} is in use by another training process (pid \ufffd12)"
    assert len(opened) == 1 and opened[0].closed


@pytest.mark.parametrize("replaced", [False, True])
def test_a_lock_file_its_holder_removes_as_it_is_checked_is_locked_anew(tmp_path, monkeypatch, replaced):
    """The holder ends (unlock_run removes .lock) while a second process checks that the file it locked is still
    the one there: whether the file is gone or already a third process's, it locks the new one (it was a
    one-line 'cannot write into' when the file went between two looks)."""
    out, real, seen = str(tmp_path / "run"), os.stat, []
    path = os.path.join(out, ".lock")

    def stat(p, *a, **k):
        if p == path:
            seen.append(p)
            if len(seen) == 1:
                os.remove(p)  # the holder's unlock_run, just now
                if replaced:
                    open(p, "w").close()  # and a third process's lock file (not the one locked)
        return real(p, *a, **k)

    opened = record_opens(monkeypatch)
    monkeypatch.setattr(runlog.os, "stat", stat)
    held = runlog.lock_run(out)
    monkeypatch.undo()
    assert open(path).read() == str(os.getpid()) and os.path.samestat(os.fstat(held.fileno()), os.stat(path))
    assert len(opened) == 2 and opened[-1] is held and opened[0].closed, opened  # the file it found removed, closed
    runlog.unlock_run(held)
    assert os.listdir(out) == []


def test_a_dead_holders_lock_file_is_taken_over_with_this_pid_alone(tmp_path):
    """Nobody holds the .lock a killed process left: it is locked, and holds this process's pid alone, by which a
    second process names the holder (appended to the dead one's, it named a pid that never was)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("999999999")
    held = runlog.lock_run(str(out))
    assert (out / ".lock").read_text() == str(os.getpid())
    runlog.unlock_run(held)
    assert os.listdir(out) == []


def test_a_lock_that_cannot_be_taken_is_one_line_and_closes_its_file(tmp_path, monkeypatch):
    """flock refused for another reason than a holder (ENOLCK, as on some network disks): one line, and the lock
    file opened for it is closed, not left open (and maybe locked) until the garbage collector finds it."""
    opened = record_opens(monkeypatch)

    def flock(f, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(runlog.UsageError, match=r"^cannot write into .*run: No locks available$"):
        runlog.lock_run(str(tmp_path / "run"))
    assert len(opened) == 1 and opened[0].closed


def test_a_run_finished_by_another_process_meanwhile_is_refused_under_the_lock(world, monkeypatch, capsys):
    """validate() looked before the data was loaded; the writer looks again once it holds the lock."""
    import checks

    monkeypatch.setattr(checks, "refuse_finished", lambda out, overwrite: None)  # as if finished since validate
    before = tree_hash(world / "old")
    assert train.cli(TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(world / "old")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"train.py: error: {world / 'old'} already holds a finished run (use --overwrite to replace it)"
    assert tree_hash(world / "old") == before and not (world / "old" / ".lock").exists()


def test_a_log_writer_leaves_its_folder_as_its_block_ends(tmp_path):
    """An OSError (a full disk): nothing left, and the lock is the next process's; another error (Ctrl-C): the
    .part kept, to be read; a normal end: log.jsonl, the finished mark, which the next writer refuses unless it
    overwrites: then the mark stays until log.unfinish(), which the caller calls as it replaces ckpt.pt."""
    out = str(tmp_path / "run")
    with pytest.raises(OSError), runlog.log_writer(out) as log:
        log({"event": "header", "label": "a"})
        raise OSError(errno.ENOSPC, "No space left on device")
    assert os.listdir(out) == []
    held = runlog.lock_run(out)
    assert os.listdir(out) == [".lock"]
    runlog.unlock_run(held)
    with pytest.raises(KeyboardInterrupt), runlog.log_writer(out) as log:
        log({"event": "header", "label": "a"})
        raise KeyboardInterrupt
    assert os.listdir(out) == ["log.jsonl.part"]
    with runlog.log_writer(out) as log:
        log({"event": "header", "label": "a"})
        log({"event": "summary", "max_acc": 1.0})
    assert os.listdir(out) == ["log.jsonl"] and runlog.is_finished(out)
    with pytest.raises(runlog.UsageError, match="already holds a finished run"), runlog.log_writer(out):
        pass
    assert os.listdir(out) == ["log.jsonl"]
    (tmp_path / "run" / "ckpt.pt").write_bytes(b"the finished run's")
    finished = tree_hash(tmp_path / "run")
    # --overwrite, stopped while it trains: the finished run is still whole
    with pytest.raises(KeyboardInterrupt), runlog.log_writer(out, overwrite=True) as log:
        log({"event": "header", "label": "b"})
        raise KeyboardInterrupt
    os.remove(os.path.join(out, "log.jsonl.part"))
    assert tree_hash(tmp_path / "run") == finished and runlog.is_finished(out)
    # --overwrite, stopped once it has replaced ckpt.pt: no log says the folder is finished
    with pytest.raises(KeyboardInterrupt), runlog.log_writer(out, overwrite=True) as log:
        log({"event": "header", "label": "b"})
        log.unfinish()
        (tmp_path / "run" / "ckpt.pt").write_bytes(b"the new run's")
        raise KeyboardInterrupt
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl.part"] and not runlog.is_finished(out)
    # a run the driver set aside (log.jsonl.stale): the mark stays while the run does not finish, and goes as it does,
    # however it was trained (a driver that saw it finish, or train.py by hand)
    aside = tmp_path / "aside"
    aside.mkdir()
    (aside / "log.jsonl.stale").write_text('{"event": "header", "label": "old lineage"}\n')
    with pytest.raises(KeyboardInterrupt), runlog.log_writer(str(aside)) as log:
        log({"event": "header", "label": "a"})
        raise KeyboardInterrupt
    assert sorted(os.listdir(aside)) == ["log.jsonl.part", "log.jsonl.stale"] and runlog.was_set_aside(aside)
    with runlog.log_writer(str(aside)) as log:
        log({"event": "header", "label": "a"})
        log({"event": "summary", "max_acc": 1.0})
    assert os.listdir(aside) == ["log.jsonl"] and runlog.is_finished(aside) and not runlog.was_set_aside(aside)
    (aside / "log.jsonl.stale").write_text('{"event": "header", "label": "old lineage"}\n')  # copied back by hand
    assert not runlog.was_set_aside(aside)  # a finished log beside it: trained since


def test_log_and_checkpoint_record_the_data(world):
    header = runlog.read_log(world / "old")[0]
    x, y, names = D.load_dataset("folder", str(world / "a" / "syn"))
    # by hand: shape and dtype, then the images and labels of train and test, hashed in that order
    h = hashlib.sha256()
    for images, labels in (x, y):
        h.update(repr((tuple(images.shape), str(images.dtype))).encode())
        h.update(images.numpy().tobytes())
        h.update(labels.to(torch.int64).numpy().tobytes())
    assert header["data"] == {"class_names": names, "num_train": len(x[1]), "num_test": len(y[1]),
                              "image_size": [32, 32], "sha256": h.hexdigest()} and header["label"] == "old"
    ident = header["data"]
    assert ident["class_names"] == ["c0", "c1", "c2", "c3"] and (ident["num_train"], ident["num_test"]) == (32, 8)
    assert torch.load(world / "old" / "ckpt.pt", weights_only=True)["data"] == ident
    other = D.load_dataset("folder", str(world / "b" / "syn"))
    assert D.identity(*other) != ident  # same names and counts, other images
    assert D.identity_diff(D.identity(*other), ident) == "sha256" and D.identity_diff(dict(ident), ident) is None
    # by hand: the first field that differs, in words; a log or checkpoint without an identity is other data
    assert D.identity_diff({**ident, "class_names": ["c0"], "num_test": 1}, ident) == "class names"
    assert D.identity_diff({**ident, "num_test": 1}, ident) == "num test"
    assert D.identity_diff({**ident, "domains": ["a"]}, ident) == "domains"
    assert D.identity_diff(None, ident) == "class names"


def test_data_cache_corrupt_or_read_only(world, tmp_path, monkeypatch, capsys):
    d = tmp_path / "syn"
    write_folder(d, num_classes=2, n_train=2, n_test=1)
    first = D.load_dataset("folder", str(d))
    cache = d / ".decoded-32px.pt"
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    again = D.load_dataset("folder", str(d))
    assert "is unreadable" in capsys.readouterr().err and torch.equal(again[0][0], first[0][0])
    assert torch.load(cache, weights_only=True)["classes"] == ["c0", "c1"]  # rebuilt
    # a read-only data folder (torch.save raises RuntimeError there): loads, and caches in the user's cache
    cache.unlink()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    real_save = torch.save

    def save(obj, path, *a, **k):
        if str(path).startswith(str(d)):
            raise RuntimeError("[enforce fail at inline_container.cc:747] . Read-only file system")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert torch.equal(D.load_dataset("folder", str(d))[0][0], first[0][0])
    err = capsys.readouterr().err
    assert "could not be written; cached the decoded images in" in err and str(tmp_path / "home-cache") in err
    assert not cache.exists() and len(list((tmp_path / "home-cache").rglob("*.pt"))) == 1
    # Ctrl-C while the cache is written (ImageNet-200's is 9.6 GB), in the data folder or, that read-only, in the
    # user's cache: no temporary file is left behind
    for f in (tmp_path / "home-cache").rglob("*.pt"):
        f.unlink()
    for where in (d, tmp_path / "home-cache"):
        def interrupted(obj, path, *a, where=where, **k):
            if not str(path).startswith(str(where)):
                raise RuntimeError("[enforce fail at inline_container.cc:747] . Read-only file system")
            with open(path, "wb") as f:
                f.write(b"part of a cache")
            raise KeyboardInterrupt

        monkeypatch.setattr(torch, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            D.load_dataset("folder", str(d))
        assert [p.name for p in d.iterdir() if p.is_file()] == [] and not list(where.rglob("*.tmp*")), where


# ------------------------------------------------------------------------------------------ the driver

PLAN = ["--plan", "table2a", "--dataset", "folder", "--split", "2+2", "--seeds", "1", "--width", "8",
        "--batch-size", "8", "--iters", "12", "--eval-every", "3", "--device", "cpu"]  # 5 runs
KEYS = ("label", "n", "max_acc", "max_acc_se", "L99", "L100")  # all but the timing columns


def driver_argv(world, data, runs, res):
    return PLAN + ["--data-dir", str(world / data / "syn"), "--runs", str(world / runs),
                   "--results", str(world / res)]


def test_bad_driver_inputs_exit_2_before_anything(world, capsys):
    base = driver_argv(world, "a", "runs_bad", "res_bad")
    cases = [
        (["--eval-every", "0"], "--eval-every must be > 0"),
        (["--split", "4"], "--task 1 is out of range"),
        (["--plan", "fig6", "--chain-scale", "-1"], "--schedule-scale must be a finite number > 0"),
        (["--plan", "fig6", "--split", "2+1x2", "--chain-scale", "inf"], "--schedule-scale must be a finite"),
        (["--plan", "table3"], "invalid choice: 'table3'"),
        (["--plan", "table2b", "--split", "2+2,,3+1", "--list"], "has an empty entry"),
        (["--gpus", "", "--device", "cuda"], "--gpus"),
        (["--runs", str(world / "afile")], "--runs"),
        (["--results", str(world / "afile" / "x")], "--results"),
        (["--batch-size", "1"], "--batch-size must be >= 2"),
        (["--per-class", "-1"], "--per-class must be >= 0"),
        (["--width", "100000"], "training needs at least"),
        (["--batch-size", "20"], "2+2/seed0/old: --batch-size 20 is larger than task 0's training data (16 examples)"),
        (["--data-dir", str(world / "single" / "syn"), "--batch-size", "2"],
         "2+2/seed0/old: task 0's classes have no test images"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device"))
    before = tree_hash(world)
    for extra, msg in cases:
        with pytest.raises(SystemExit) as e:
            reproduce.main(base + extra)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1, (extra, err)
        assert tree_hash(world) == before, extra
    assert not (world / "runs_bad").exists() and not (world / "res_bad").exists()
    r = subprocess.run([sys.executable, "-m", "repro.reproduce", "--plan", "table3"], capture_output=True, cwd=ROOT,
                       text=True)
    assert r.returncode == 2 and r.stderr.startswith("reproduce.sh: error: argument --plan: invalid choice")
    assert len(r.stderr.strip().splitlines()) == 1


def test_no_gpu_message_is_the_plans_size(world, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        reproduce.main(driver_argv(world, "a", "runs_bad", "res_bad") + ["--device", "auto"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert "5 runs of up to 12 iterations: about 1 second on a CPU" in err and "days" not in err, err
    # each run at its own length: Ours (x0.5) trains half of --iters. By hand, at width 64 on 32 px images (no
    # scaling), batch 8: (4 x 40,000 + 20,000) x 8 x 3.3e9 FLOPs / 1e11 FLOP/s = 47,520 s = 13.2 hours (every run
    # counted in full: 52,800 s = 14.7 hours)
    with pytest.raises(SystemExit):
        reproduce.main(driver_argv(world, "a", "runs_bad", "res_bad") + ["--device", "auto", "--width", "64",
                                                                          "--iters", "40000"])
    assert "5 runs of up to 40000 iterations: about 13 hours on a CPU" in capsys.readouterr().err
    assert not (world / "runs_bad").exists()


def test_ctrl_c_is_one_line_and_the_rerun_trains(world):
    out = world / "interrupted"
    argv = [sys.executable, os.path.join(ROOT, "train.py"), *TRAIN, "--data-dir", str(world / "a" / "syn"),
            "--out", str(out)]
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731 - a background job ignores it
    proc = subprocess.Popen(argv + ["--iters", "1000000"], stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    part, deadline = out / "log.jsonl.part", time.time() + 600
    while proc.poll() is None and time.time() < deadline:  # until it trains: the header and a first evaluation
        if part.exists() and len(part.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait() == 130 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("train.py: interrupted;") and not (out / ".lock").exists()
    assert sorted(os.listdir(out)) == ["log.jsonl.part"]  # the log so far is kept, to be read
    r = subprocess.run(argv, capture_output=True, text=True)  # the unfinished run starts again
    assert r.returncode == 0 and runlog.is_finished(out), r.stderr


def test_a_driver_stopped_before_or_while_it_trains_is_one_line_and_lets_go_of_its_runs(world, capsys, monkeypatch):
    """Ctrl-C (or SIGTERM) while the driver reads the runs folder under its lock, or while a run trains: one line,
    the lock released, and the next driver finishes the plan."""
    argv = driver_argv(world, "a", "runs_stopped", "res_stopped")

    def stop(*a, **k):
        raise KeyboardInterrupt

    for where in ("stale_runs", "run_inprocess"):
        with monkeypatch.context() as m:
            m.setattr(reproduce, where, stop)
            with pytest.raises(SystemExit) as e:
                reproduce.main(argv)
        assert e.value.code == "reproduce.sh: interrupted; finished runs are kept, run the same command to resume"
        assert not (world / "runs_stopped" / ".lock").exists(), where
    assert reproduce.main(argv) == 0 and "0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("error", [SystemExit, RuntimeError])
def test_a_driver_that_fails_while_its_workers_train_stops_them(world, monkeypatch, error):
    """Any error out of the driver's loop (a one-line error such as a log it cannot set aside, or a plan's
    unsatisfiable dependencies) stops the workers it started, as Ctrl-C does: none goes on writing into a run
    folder once the lock is released."""
    workers, real_sleep = [], time.sleep

    def launch(argv, slot, args, run_dir):
        workers.append(subprocess.Popen(["sleep", "60"], start_new_session=True))
        return workers[-1]

    def fail(seconds):
        if seconds == 0.2:  # the loop's wait for its workers
            raise error("reproduce.sh: cannot set aside a log")
        real_sleep(seconds)

    monkeypatch.setattr(reproduce, "launch", launch)
    monkeypatch.setattr(time, "sleep", fail)
    try:
        with pytest.raises(error):
            reproduce.main(driver_argv(world, "a", f"runs_fail_{error.__name__}", "res_fail") + ["--jobs-per-gpu", "2"])
        assert workers and [w.poll() for w in workers] == [-signal.SIGTERM] * len(workers)
    finally:
        for w in workers:
            w.kill()
            w.wait()


def test_list_into_a_closed_pipe_is_quiet(world):
    p = subprocess.Popen([sys.executable, "-m", "repro.reproduce", *driver_argv(world, "a", "r", "s"),
                          "--list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.close()  # as `| head -1` does once it has its line
    err = p.stderr.read().decode()
    assert p.wait() == 0 and err == ""


def worker_pids(marker):
    """Processes whose command line mentions `marker` (the runs folder of a test)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:  # gone meanwhile
            continue
        if marker.encode() in cmd and b"train.py" in cmd:
            pids.append(int(pid))
    return pids


@pytest.fixture(scope="module")
def uninterrupted(world):
    """The plan run once in-process without faults: the table a faulty run must end with."""
    assert reproduce.main(driver_argv(world, "a", "runs_ref", "res_ref")) == 0
    return list(csv.DictReader(open(world / "res_ref" / "table2a_folder.csv")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_driver_takes_its_workers_and_the_rerun_mixes_nothing(world, uninterrupted):
    runs = world / "runs_kill"
    argv = driver_argv(world, "a", "runs_kill", "res_kill") + ["--jobs-per-gpu", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "repro.reproduce", *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, seen, fresh = time.time() + 120, set(), set()
    while time.time() < deadline and proc.poll() is None:  # kill as soon as new workers start after 2 runs
        pids = set(worker_pids(str(runs)))
        fresh, seen = pids - seen, seen | pids
        if fresh and len(list(runs.glob("*/*/*/log.jsonl"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None and fresh, "the plan ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 1.5  # a fresh worker has seconds of start-up ahead: it must not outlive this
    while worker_pids(str(runs)) and time.time() < deadline:
        time.sleep(0.05)
    assert worker_pids(str(runs)) == []  # no worker survives its driver
    finished = {p: p.read_bytes() for p in runs.glob("*/*/*/log.jsonl")}
    assert 2 <= len(finished) < 5
    assert reproduce.main(argv) == 0
    for p, b in finished.items():
        assert p.read_bytes() == b, p  # finished runs are neither run again nor touched
    logs = list(runs.glob("*/*/*/log.jsonl"))
    assert len(logs) == 5 and all(runlog.is_finished(p) for p in logs)
    assert not list(runs.rglob("*.part")) and not list(runs.rglob(".lock"))
    table = list(csv.DictReader(open(world / "res_kill" / "table2a_folder.csv")))
    assert [[r[k] for k in KEYS] for r in table] == [[r[k] for k in KEYS] for r in uninterrupted]


def test_two_datasets_of_one_folder_name_never_share_runs(world, uninterrupted, capsys):
    # by default their runs folders differ ...
    dirs = [reproduce.resolve(reproduce.build_parser().parse_args(PLAN + ["--data-dir", str(world / x / "syn")]))[0]
            for x in ("a", "b")]
    assert dirs[0] != dirs[1] and all(os.path.basename(d).startswith("folder-syn-") for d in dirs)
    # ... and the other dataset pointed at the first one's runs is refused before anything runs
    before = tree_hash(world / "runs_ref")
    with pytest.raises(SystemExit) as e:
        reproduce.main(driver_argv(world, "b", "runs_ref", "res_other"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "holds a finished run on other data (sha256 not the same" in err
    assert len(err.splitlines()) == 1
    assert tree_hash(world / "runs_ref") == before and not (world / "res_other").exists()


# ------------------------------------------------------------------------------------ repro.table

def write_log(path, header=None, evals=None, summary=True):
    path.mkdir(parents=True)
    lines = [header or {"event": "header", "label": "scratch", "group": {}, "config": {"seed": 0}}]
    lines += evals if evals is not None else [{"event": "eval", "iter": i, "acc": 10.0 * i, "train_seconds": i}
                                              for i in range(3)]
    lines += [{"event": "summary"}] if summary else []
    (path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def test_speedup_bad_logs(tmp_path, capsys):
    ok = write_log(tmp_path / "ok")
    nan = write_log(tmp_path / "nan", evals=[{"event": "eval", "iter": 0, "acc": float("nan"), "train_seconds": 0}])
    cases = [
        ([nan], "has acc = nan"),
        ([write_log(tmp_path / "noevals", evals=[])], "no evaluations"),
        ([write_log(tmp_path / "nolabel", header={"event": "header", "group": {}})], "header has no label"),
        ([ok, write_log(tmp_path / "copy")], "are the same run"),
        ([ok, "--md", str(tmp_path / "missing" / "t.md")], "does not exist"),
        # the folders are checked before anything is written, and before the logs are read
        ([ok, "--md", str(tmp_path / "t.md"), "--csv", str(tmp_path / "missing" / "t.csv")], "--csv"),
        ([nan, "--md", str(tmp_path / "missing" / "t.md")], "--md"),
    ]
    for argv, msg in cases:
        assert table.main(argv + ["--reference", "scratch"]) == 2, argv
        out, err = capsys.readouterr()
        assert msg in err and len(err.strip().splitlines()) == 1 and out == "", (argv, err)
    assert not (tmp_path / "missing").exists() and not (tmp_path / "t.md").exists()
    # the same folder twice counts once; an unfinished run is left out with a warning
    unfinished = write_log(tmp_path / "unfinished", header={"event": "header", "label": "x", "group": {}},
                           summary=False)
    assert table.main([ok, ok + "/log.jsonl", unfinished, "--reference", "scratch"]) == 0
    out, err = capsys.readouterr()
    assert "| scratch | 1 |" in out and "given twice" in err and "unfinished" in err
    # a row with no seed in common with the reference (Eq. 2 pairs seeds): left out with a warning, not a crash
    other = write_log(tmp_path / "seed1", header={"event": "header", "label": "ours", "group": {},
                                                  "config": {"seed": 1}})
    assert table.main([ok, other, "--reference", "scratch"]) == 0
    out, err = capsys.readouterr()
    assert "| scratch | 1 |" in out and "| ours |" not in out and "'ours' has no seed in common" in err


def test_forward_backward_takes_a_compiled_module():
    """torch.compile's module proxies len() to the model, so truth-testing it raised "ResNet does not support
    len()" on every --compile run. A stand-in with the same len() (compiling on a CPU takes over a minute)."""
    from resnet import resnet18

    class Compiled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return 2 * self.model(x)  # distinguishable from the model's own output

        def __len__(self):
            raise TypeError("ResNet does not support len()")

    model = resnet18(3, width=8).eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    loss, logits = step.forward_backward(model, x, y, forward=Compiled(model))
    with torch.no_grad():
        want = 2 * model(x)
    assert torch.allclose(logits, want) and torch.allclose(loss, torch.nn.functional.cross_entropy(want, y))
    assert model.fc.weight.grad is not None


# ------------------------------------------------------------------------------------------ image folders

def test_16_bit_grayscale_images_are_scaled_not_clipped(tmp_path):
    """Pillow's convert("RGB") clips mode I;16 at 255: every pixel of a 16-bit grayscale PNG came out white."""
    from PIL import Image

    write_folder(tmp_path / "syn", num_classes=2, n_train=2, n_test=1)
    wide = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "syn" / "train" / "c0" / "0000.png")  # a 16-bit PNG (mode I;16)
    assert Image.open(tmp_path / "syn" / "train" / "c0" / "0000.png").mode in ("I;16", "I")
    (x, _), _, _ = D.load_dataset("folder", str(tmp_path / "syn"))
    want = torch.from_numpy(np.round(wide / 257).astype(np.uint8))
    assert all(torch.equal(x[0, c], want) for c in range(3))  # gray, 0..255, no clipping
    Image.fromarray(wide.astype(np.float32)).save(tmp_path / "syn" / "train" / "c1" / "0002.tif")  # mode F
    with pytest.raises(ValueError, match=r"0002\.tif: F images of floating-point pixels are not supported"):
        D.load_dataset("folder", str(tmp_path / "syn"))


def test_archive_side_folders_are_not_data(tmp_path):
    """A zip made on macOS holds __MACOSX/<class>/._<image> beside the class folders: not a class, not a
    domain, and ._* files inside a class folder are not images."""
    d = tmp_path / "syn"
    write_folder(d, num_classes=2, n_train=3, n_test=1)
    for split in ("train", "test"):
        (d / split / "__MACOSX" / "c0").mkdir(parents=True)
        (d / split / "__MACOSX" / "c0" / "._0000.png").write_bytes(b"\0\5\26\7resource fork")
        (d / split / "c0" / "._0000.png").write_bytes(b"\0\5\26\7resource fork")
    assert D.num_classes_of("folder", str(d)) == 2
    (_, y), _, names = D.load_dataset("folder", str(d))
    assert names == ["c0", "c1"] and len(y) == 6
    shutil.copytree(d / "train", tmp_path / "flat")  # one level: <class>/<image>, cut by the seeded split
    assert D.load_dataset("folder", str(tmp_path / "flat"))[2] == ["c0", "c1"]


# ------------------------------------------------------------------------------------------ a runs folder

def copy_runs(world, name):
    """A copy of the finished runs of the reference plan (runs_ref), to break."""
    shutil.copytree(world / "runs_ref", world / name)
    return world / name


def broken_runs_folders(world):
    """(name, how to break a copy of runs_ref, extra driver flags, expected exit code, phrase of the one line)."""
    log = os.path.join("2+2", "seed0", "scratch", "log.jsonl")

    def cut(runs, name="2+2/seed0/continuous"):  # an unfinished run: the driver has work to do
        (runs / name / "log.jsonl").unlink()

    return [
        ("no_group", lambda r: edit_log(r / log, header=lambda h: without(h, "group")), [], 2,
         f"{log}: the header has no group"),
        ("no_group", None, ["--report-only"], 2, f"{log}: the header has no group"),
        ("acc_text", lambda r: edit_log(r / log, evals=lambda e: {**e, "acc": "high"}), [], 2,
         f"{log}: evaluation at iteration 0 has acc = high"),
        ("acc_text", None, ["--report-only"], 2, f"{log}: evaluation at iteration 0 has acc = high"),
        ("empty", lambda r: shutil.rmtree(r) or r.mkdir(), ["--report-only"], 2,
         "no finished run of plan table2a in"),
        ("mistyped", lambda r: shutil.rmtree(r), ["--report-only"], 2, "no finished run of plan table2a in"),
        ("locked", lambda r: cut(r) or hold_lock(r), [], 2, "is in use by another reproduce.sh (pid 12345)"),
    ]


def test_broken_runs_folders_are_one_line_and_touch_nothing(world, uninterrupted, capsys):
    """A hand-edited log, an empty or mistyped runs folder, a runs folder in use by another driver: one line,
    exit 2, and neither a finished run nor an existing table is touched."""
    shutil.copytree(world / "res_ref", world / "res_broken")  # a table of numbers, which must stay
    held = []
    for name, breaks, extra, code, phrase in broken_runs_folders(world):
        runs = world / f"runs_{name}"
        if breaks is not None:
            held.append(breaks(copy_runs(world, runs.name)))
        before, tables = tree_hash(world / "runs_ref"), tree_hash(world / "res_broken")
        runs_before = tree_hash(runs) if runs.exists() else None
        with pytest.raises(SystemExit) as e:
            reproduce.main(driver_argv(world, "a", runs.name, "res_broken") + extra)
        err = capsys.readouterr().err.strip()
        assert e.value.code == code and phrase in err and len(err.splitlines()) == 1, (name, extra, err)
        assert tree_hash(world / "res_broken") == tables and tree_hash(world / "runs_ref") == before, name
        assert (tree_hash(runs) if runs.exists() else None) == runs_before, name
        if "--report-only" not in extra and name != "locked":
            run = str(runs / "2+2" / "seed0" / "scratch")  # repro.table says the same of the same log
            assert table.main([run, "--reference", "scratch"]) == 2
            err = capsys.readouterr().err.strip()
            assert phrase in err and len(err.splitlines()) == 1, err
    for f in held:
        if f is not None:
            f.close()


def test_a_report_from_fewer_runs_keeps_the_fuller_table(world, uninterrupted, capsys):
    runs = copy_runs(world, "runs_fewer")
    argv = driver_argv(world, "a", "runs_fewer", "res_fewer") + ["--report-only"]
    assert reproduce.main(argv) == 0
    full = (world / "res_fewer" / "table2a_folder.md").read_text()
    assert ", 5 finished run(s);" in full
    shutil.rmtree(runs / "2+2" / "seed0" / "continuous+init+reg+data+x0.5")
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    err = capsys.readouterr().err
    assert "was made from 5 finished runs, this one from 4; the old table is kept as table2a_folder.prev.md" in err
    assert (world / "res_fewer" / "table2a_folder.prev.md").read_text() == full


def old_hash(runs):
    from ckpt import weights_hash

    return weights_hash(torch.load(runs / "2+2" / "seed0" / "old" / "ckpt.pt", weights_only=True))


CONTINUED = ("continuous", "continuous+init+reg+data", "continuous+init+reg+data+x0.5")


def test_runs_from_an_old_model_that_changed_are_trained_again(world, uninterrupted, capsys):
    """The old model trained again (on a GPU: to other weights): the runs continued from the previous one are
    trained again from the new one; the scratch run, which does not read it, is kept."""
    runs = copy_runs(world, "runs_lineage")
    old = runs / "2+2" / "seed0" / "old" / "ckpt.pt"
    assert runlog.read_log(runs / "2+2" / "seed0" / "continuous")[0]["old_weights_sha256"] == old_hash(runs)
    perturb(old.parent)
    scratch = tree_hash(runs / "2+2" / "seed0" / "scratch")
    with pytest.raises(SystemExit) as e:  # a report alone would mix the two lineages: refused
        reproduce.main(driver_argv(world, "a", "runs_lineage", "res_lineage") + ["--report-only"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "was continued from another" in err and len(err.splitlines()) == 1, err
    assert not (world / "res_lineage").exists()
    assert reproduce.main(driver_argv(world, "a", "runs_lineage", "res_lineage")) == 0
    out = capsys.readouterr().out
    assert out.count("training it again") == 3, out
    for label in CONTINUED:
        assert runlog.read_log(runs / "2+2" / "seed0" / label)[0]["old_weights_sha256"] == old_hash(runs), label
    assert tree_hash(runs / "2+2" / "seed0" / "scratch") == scratch


@pytest.mark.parametrize("how", ["changed", "trained_again"])
def test_runs_from_an_old_model_trained_again_to_other_weights_are_set_aside_and_trained_again(
        world, uninterrupted, capsys, monkeypatch, how):
    """The old model at other weights (changed: since the runs continued from it finished; trained_again: its log
    lost, so this driver trains it again, as on a GPU): the three runs continued from the previous one are set
    aside (log.jsonl.stale) and trained again from the new one. Where that training fails, the table holds none
    of them (no run of the previous lineage is mixed in), and the next driver trains them: their folders no
    longer read as finished."""
    runs = copy_runs(world, f"runs_{how}")
    seed = runs / "2+2" / "seed0"
    previous, real = old_hash(runs), reproduce.run_inprocess
    if how == "changed":
        perturb(seed / "old")
    else:
        (seed / "old" / "log.jsonl").unlink()
    # the old model trains to other weights; the runs continued from it fail
    monkeypatch.setattr(reproduce, "run_inprocess", gpu_like(real, fails=lambda to: to.endswith(CONTINUED),
                                                             after={str(seed / "old"): lambda: perturb(seed / "old")}))
    argv = driver_argv(world, "a", runs.name, f"res_{how}")
    assert reproduce.main(argv) == 1
    out = capsys.readouterr().out
    assert out.count("finished, but it was continued from another") == 3 and "3 failed" in out, out
    assert old_hash(runs) != previous
    for label in CONTINUED:
        assert not runlog.is_finished(seed / label)
        assert runlog.read_log(seed / label / "log.jsonl.stale")[0]["old_weights_sha256"] == previous
    assert ", 2 finished run(s);" in (world / f"res_{how}" / "table2a_folder.md").read_text()
    monkeypatch.setattr(reproduce, "run_inprocess", real)
    assert reproduce.main(argv) == 0
    assert "2 already finished, 3 to run" in capsys.readouterr().out
    for label in CONTINUED:
        assert runlog.read_log(seed / label)[0]["old_weights_sha256"] == old_hash(runs), label
        assert not (seed / label / "log.jsonl.stale").exists(), label  # trained since: no longer set aside
    assert reproduce.main(argv) == 0  # none still reads as set aside: nothing trains again
    assert "5 already finished, 0 to run" in capsys.readouterr().out


def test_a_finished_old_model_without_its_checkpoint_is_trained_again(world, uninterrupted, capsys):
    """Only when a run still to do needs it: the old model is trained again (on a CPU to the same weights, so the
    two finished runs continued from it are checked against the new checkpoint and kept, their logs untouched)."""
    runs = copy_runs(world, "runs_no_ckpt")
    seed = runs / "2+2" / "seed0"
    (seed / "old" / "ckpt.pt").unlink()
    (seed / "continuous" / "log.jsonl").unlink()  # a run that needs it is still to do
    kept = {label: (seed / label / "log.jsonl").read_bytes() for label in CONTINUED[1:]}
    assert reproduce.main(driver_argv(world, "a", "runs_no_ckpt", "res_no_ckpt")) == 0
    out = capsys.readouterr().out
    assert "the ckpt.pt that later runs start from is gone; training it again" in out
    assert out.count("kept: the runs it depends on did not change") == 2, out
    assert all((seed / label / "log.jsonl").read_bytes() == log for label, log in kept.items())
    assert (seed / "old" / "ckpt.pt").is_file()
    for label in CONTINUED:
        assert runlog.read_log(seed / label)[0]["old_weights_sha256"] == old_hash(runs), label


def test_a_run_whose_log_records_no_old_model_is_trained_again_after_its_old_model(world, uninterrupted, capsys):
    """A log from before the old model's hash was recorded: kept while its old model stays, trained again once
    this driver trains the old model again (nothing tells whether it did so to the same weights); the runs whose
    logs record the hash are checked against it and kept."""
    runs = copy_runs(world, "runs_no_hash")
    seed = runs / "2+2" / "seed0"
    edit_log(seed / "continuous" / "log.jsonl", header=lambda h: without(h, "old_weights_sha256"))
    assert reproduce.main(driver_argv(world, "a", "runs_no_hash", "res_no_hash")) == 0
    assert "0 to run" in capsys.readouterr().out
    (seed / "old" / "log.jsonl").unlink()
    kept = {label: (seed / label / "log.jsonl").read_bytes() for label in CONTINUED[1:]}
    assert reproduce.main(driver_argv(world, "a", "runs_no_hash", "res_no_hash")) == 0
    out = capsys.readouterr().out
    assert ("2+2/seed0/continuous: finished, but its log does not record which old model it continued from, and "
            "that was trained again; training it again") in out, out
    assert out.count("kept: the runs it depends on did not change") == 2, out
    assert all((seed / label / "log.jsonl").read_bytes() == log for label, log in kept.items())
    assert runlog.read_log(seed / "continuous")[0]["old_weights_sha256"] == old_hash(runs)


def test_a_finished_seed_without_its_old_checkpoint_is_kept_whole(world, uninterrupted, capsys):
    """Every run of the seed finished (logs kept, checkpoints not, as tools/gpu_check.sh carries them): nothing
    needs the old checkpoint, so nothing is trained again, and --report-only reads the same runs."""
    runs = copy_runs(world, "runs_logs_only")
    for ckpt in runs.rglob("ckpt.pt"):
        ckpt.unlink()
    before = tree_hash(runs)
    assert reproduce.main(driver_argv(world, "a", "runs_logs_only", "res_logs_only")) == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and "training it again" not in out, out
    assert tree_hash(runs) == before
    assert reproduce.main(driver_argv(world, "a", "runs_logs_only", "res_logs_only2") + ["--report-only"]) == 0
    assert (world / "res_logs_only2" / "table2a_folder.csv").read_text() == \
        (world / "res_ref" / "table2a_folder.csv").read_text()


# ------------------------------------------------------------------------------------------ a full disk

def test_a_full_disk_is_one_line_up_front(world, monkeypatch, capsys):
    import shutil as sh

    usage = sh.disk_usage(world)
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage._replace(free=10 * 2 ** 20))
    # refused before the device's work (the step built, a CUDA graph captured, a model compiled) starts
    monkeypatch.setattr(train, "build_step", lambda *a, **k: pytest.fail("the step was built before the check"))
    before = tree_hash(world)
    assert train.cli(TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(world / "full"),
                              "--width", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "full: 10 MiB free on its disk, the run writes about" in err and len(err.splitlines()) == 1, err
    assert tree_hash(world) == before and not (world / "full").exists()
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage._replace(free=2 ** 20))
    with pytest.raises(SystemExit) as e:
        reproduce.main(driver_argv(world, "a", "runs_full", "res_full"))
    err = capsys.readouterr().err.strip()
    # fp32 copies of ResNet-18's 11.2M / 64 = 175,000 weights at width 8: the old model saves 4 (the weights, their
    # init, Adam's two moments), the 4 runs of the next task 2 each (--learning-speed off: no Adam state saved);
    # plus 1 MiB per log: (4 + 4 x 2) x 4 x 175,000 + 5 x 2^20 = 13,642,880 bytes = 13.0 MiB
    assert e.value.code == 2 and "runs_full: 1 MiB free on its disk, the 5 runs it may train write about 13 MiB" in err
    assert tree_hash(world) == before and not (world / "runs_full").exists()
    # the runs folder made for the driver's lock goes with the refusal; one that was there already stays
    (world / "runs_full_empty").mkdir()
    with pytest.raises(SystemExit):
        reproduce.main(driver_argv(world, "a", "runs_full_empty", "res_full"))
    assert "the 5 runs it may train" in capsys.readouterr().err and os.listdir(world / "runs_full_empty") == []
    (world / "runs_full_empty").rmdir()
    # a disk too full for the lock file's pid: refused at the lock, and the runs folder made for it goes too
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage)
    disk_with_room(monkeypatch, runlog, 0, modes="w+")
    with pytest.raises(SystemExit):
        reproduce.main(driver_argv(world, "a", "new/runs_full", "res_full"))
    err = capsys.readouterr().err.strip()
    assert err == f"reproduce.sh: error: cannot write into {world / 'new' / 'runs_full'}: No space left on device", err
    assert tree_hash(world) == before and not (world / "new").exists()  # the folders made for it, all of them


def test_the_up_front_space_check_counts_the_runs_it_may_train(world, uninterrupted, monkeypatch, capsys):
    """Not the whole plan's 13 MiB: the unfinished runs, those trained again for a checkpoint a run to train
    needs, and the finished runs that depend on either (kept only if it trains to the same result)."""
    import shutil as sh

    usage = sh.disk_usage(world)
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage._replace(free=2 ** 20))

    def refused(name):
        before = tree_hash(world)
        with pytest.raises(SystemExit) as e:
            reproduce.main(driver_argv(world, "a", name, f"res_{name}"))
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and tree_hash(world) == before, err
        return err

    seed = copy_runs(world, "runs_part") / "2+2" / "seed0"
    for name in ("scratch", "continuous"):  # a resumed plan: two runs, on which none depends, left to train
        (seed / name / "log.jsonl").unlink()
    # 2 fp32 copies of the 175,000 weights each (--learning-speed off: no Adam state), plus 1 MiB per log:
    # 4 x 4 x 175,000 + 2 x 2^20 = 4,897,152 bytes = 4.7 MiB
    assert "runs_part: 1 MiB free on its disk, the 2 runs it may train write about 5 MiB" in refused("runs_part")
    seed = copy_runs(world, "runs_old_lost") / "2+2" / "seed0"
    (seed / "old" / "log.jsonl").unlink()  # the old model again, and the three runs continued from it
    # (4 + 3 x 2) x 4 x 175,000 + 4 x 2^20 = 11,194,304 bytes = 10.7 MiB
    assert "the 4 runs it may train write about 11 MiB" in refused("runs_old_lost")
    runs = copy_runs(world, "runs_logs_lost")
    for ckpt_pt in runs.rglob("ckpt.pt"):  # logs carried alone, one continued run unfinished: its old model is
        ckpt_pt.unlink()  # trained again for its ckpt.pt, and so may the two other runs continued from it
    (runs / "2+2" / "seed0" / "continuous" / "log.jsonl").unlink()
    assert "the 4 runs it may train write about 11 MiB" in refused("runs_logs_lost")


@pytest.mark.parametrize("room", [0, 1000])  # the header (a few KiB) fails at once, or once 1000 bytes are written
def test_a_failed_first_log_line_is_one_line_and_leaves_no_lock_or_part(world, monkeypatch, capsys, room):
    """The header is the log's first write: a full disk there is the same one line naming the log (exit 1), not
    a traceback, even though closing the file tries the buffered line again."""
    disk_with_room(monkeypatch, runlog, room)
    out = world / f"nospace-header{room}"
    assert train.cli(TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"train.py: error: cannot write {out}/log.jsonl.part: No space left on device (ENOSPC); "
                   "the run is not finished"), err
    assert os.listdir(out) == []  # no .lock, no log.jsonl.part


def test_a_lock_file_that_cannot_be_written_is_one_line_and_left_behind_by_no_one(world, monkeypatch, capsys):
    """The pid in out/.lock is a run's first write: a full disk there is one line (exit 2), and no .lock is left
    (the buffered pid, written again as the file closes, made the error a bare OSError and kept the file)."""
    disk_with_room(monkeypatch, runlog, 0, modes="w+")
    out = world / "nospace-lock"
    assert train.cli(TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"train.py: error: cannot write into {out}: No space left on device", err
    assert os.listdir(out) == []


@pytest.mark.parametrize("room", [0, 4096])  # torch.save's first write fails, or one once part of the file is out
def test_overwrite_keeps_the_finished_run_whole_when_its_new_checkpoint_cannot_be_written(world, monkeypatch, capsys,
                                                                                         room):
    """--overwrite over a finished run, the disk full under the new ckpt.pt: one line naming ckpt.pt (exit 1), and
    the finished run's log and ckpt.pt are there as they were, byte for byte (it still reads as finished)."""
    out = world / f"overwrite-full{room}"
    argv = TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(out)]
    assert train.cli(argv) == 0
    finished = tree_hash(out)
    disk_with_room(monkeypatch, ckpt, room)
    assert train.cli(argv + ["--overwrite", "--seed", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"train.py: error: cannot write {out}/ckpt.pt: ") and len(err.splitlines()) == 1, err
    assert tree_hash(out) == finished and runlog.is_finished(out)


@pytest.mark.parametrize("room", [0, 4096])  # torch.save's first write fails, or one once part of the file is out
def test_a_failed_write_is_one_line_and_leaves_no_lock_or_part(world, monkeypatch, capsys, room):
    """A full disk under ckpt.pt: torch's zip writer raises its own RuntimeError over the OSError once part of the
    file is written; either way one line naming ckpt.pt."""
    disk_with_room(monkeypatch, ckpt, room)
    out = world / f"nospace{room}"
    assert train.cli(TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"train.py: error: cannot write {out}/ckpt.pt: "), err
    assert err.endswith("No space left on device (ENOSPC); the run is not finished"), err
    assert os.listdir(out) == []  # no .lock, no log.jsonl.part, no half-written checkpoint


def test_overwrite_keeps_the_finished_run_until_its_checkpoint_is_replaced(world, monkeypatch, capsys):
    """--overwrite over a finished run: the disk fills at the summary line, after the new ckpt.pt is in place. The
    folder then reads as unfinished (no log.jsonl): the old run's log never stands beside the new run's ckpt.pt."""
    out = world / "overwritten"
    argv = TRAIN + ["--data-dir", str(world / "a" / "syn"), "--out", str(out)]
    assert train.cli(argv) == 0
    old_ckpt = (out / "ckpt.pt").read_bytes()
    real = json.dumps

    def dumps(obj, *a, **k):
        if isinstance(obj, dict) and obj.get("event") == "summary":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, *a, **k)

    monkeypatch.setattr(runlog.json, "dumps", dumps)
    seen = []  # whether the finished run's log.jsonl is there as each step starts

    def logged_at(when, fn, only=lambda *a: True):
        def wrapped(*a, **k):
            if only(*a):
                seen.append((when, os.path.exists(out / "log.jsonl")))
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(train, "train_accuracy", logged_at("last pass", train.train_accuracy))
    monkeypatch.setattr(ckpt.torch, "save", logged_at("ckpt.pt written", torch.save))
    monkeypatch.setattr(runlog.os, "replace", logged_at("ckpt.pt replaced", os.replace,
                                                        only=lambda src, dst: str(dst).endswith("ckpt.pt")))
    assert train.cli(argv + ["--overwrite", "--seed", "1"]) == 1
    # kept through training and while the new ckpt.pt is written beside the old one (a full disk there keeps the
    # finished run whole); gone as it replaces the old one, so a kill from there on leaves no finished log
    assert seen == [("last pass", True), ("ckpt.pt written", True), ("ckpt.pt replaced", False)]
    assert "log.jsonl.part: No space left on device (ENOSPC)" in capsys.readouterr().err
    assert os.listdir(out) == ["ckpt.pt"] and (out / "ckpt.pt").read_bytes() != old_ckpt
    assert not runlog.is_finished(out)
