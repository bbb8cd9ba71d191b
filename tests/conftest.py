"""Synthetic datasets in the real on-disk formats (CIFAR python pickles, image folders), written to temp dirs.

Images are learnable: each class has its own colour (plus noise), which survives cropping and flipping,
so a tiny network learns it in tens of iterations and "starts from the old model" is measurable."""
import json
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def synthetic_images(labels, num_classes, seed, size=32):
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(1234).uniform(30, 225, size=(num_classes, 3))  # same in train and test
    x = colours[labels][:, None, None, :] + rng.normal(0, 20, size=(len(labels), size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8)  # [N,H,W,3] like CIFAR's .data


def write_cifar(root, name="cifar10", n_train=20, n_test=10, num_classes=None, seed=0):
    """CIFAR-10/100 python-pickle files as the authors' release lays them out; n_* are per class."""
    num_classes = num_classes or (10 if name == "cifar10" else 100)
    ytr = np.repeat(np.arange(num_classes), n_train)
    yte = np.repeat(np.arange(num_classes), n_test)
    np.random.default_rng(seed).shuffle(ytr)
    xtr, xte = synthetic_images(ytr, num_classes, seed), synthetic_images(yte, num_classes, seed + 1)

    def blob(x, y, key):
        return {"data": x.reshape(len(x), -1, order="C").reshape(len(x), 32, 32, 3).transpose(0, 3, 1, 2)
                .reshape(len(x), -1), key: y.tolist()}

    names = [f"class{k:03d}" for k in range(num_classes)]
    if name == "cifar10":
        d = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(d, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(len(ytr)), 5)):
            _dump(os.path.join(d, f"data_batch_{i + 1}"), blob(xtr[part], ytr[part], "labels"))
        _dump(os.path.join(d, "test_batch"), blob(xte, yte, "labels"))
        _dump(os.path.join(d, "batches.meta"), {"label_names": names})
    else:
        d = os.path.join(root, "cifar-100-python")
        os.makedirs(d, exist_ok=True)
        _dump(os.path.join(d, "train"), blob(xtr, ytr, "fine_labels"))
        _dump(os.path.join(d, "test"), blob(xte, yte, "fine_labels"))
        _dump(os.path.join(d, "meta"), {"fine_label_names": names})
    return (xtr, ytr), (xte, yte), names


class Py2Pickler(pickle._Pickler):
    """Writes text and bytes as Python 2's str (BINSTRING), as the CIFAR release's pickles hold them: array data
    included, so reading them takes encoding="latin1"."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_str


def _dump(path, obj):
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def write_folder(root, num_classes=3, n_train=4, n_test=2, size=32, seed=0):
    """data_dir/train/<class>/*.png and data_dir/test/<class>/*.png."""
    from PIL import Image

    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.repeat(np.arange(num_classes), n)
        x = synthetic_images(y, num_classes, seed + (split == "test"), size)
        for i, (img, k) in enumerate(zip(x, y)):
            d = os.path.join(root, split, f"c{k}")
            os.makedirs(d, exist_ok=True)
            Image.fromarray(img).save(os.path.join(d, f"{i:04d}.png"))
        out[split] = (x, y)
    return out


@pytest.fixture
def no_checksum(monkeypatch):
    """Bypass only the md5 check of CIFAR's files, so cifar.load's real code runs on the synthetic files."""
    import cifar

    monkeypatch.setattr(cifar, "file_md5_is", lambda path, md5: os.path.isfile(path))


def edit_log(log, header=lambda h: h, evals=lambda e: e, summary=lambda s: s):
    """Edit a run's log.jsonl line by line, as a hand (or an older train.py) would have written it."""
    edits = {"header": header, "eval": evals, "summary": summary}
    lines = [edits.get(x["event"], lambda x: x)(x) for x in map(json.loads, log.read_text().splitlines())]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


def perturb(run_dir):
    """The model in run_dir/ckpt.pt trained again to other weights, as on a GPU."""
    c = torch.load(run_dir / "ckpt.pt", weights_only=True)
    c["model"]["fc.bias"] += 0.01
    torch.save(c, run_dir / "ckpt.pt")


def gpu_like(train, fails=lambda out: False, after=None):
    """A stand-in for the driver's run_inprocess(argv, out) that trains as `train` does, but as a GPU may: a run
    whose --out fails(out) fails at once, and after[out]() runs once that run has trained (to other weights, or to
    another maximum: a CPU trains again to the same result)."""
    after = after or {}

    def run(argv, out):
        to = argv[argv.index("--out") + 1]
        if fails(to):
            return False
        ok = train(argv, out)
        after.get(to, lambda: None)()
        return ok

    return run


# ------------------------------------------------------------------ independent re-computation from logs

def curves(run_dir):
    lines = [json.loads(x) for x in open(os.path.join(run_dir, "log.jsonl"))]
    return [e for e in lines if e["event"] == "eval"]


def independent_speedup(ref, cur, r):
    """Eq. 1-2 written again: seed-averaged curves (over the evaluations every seed has: runs stopped early
    are shorter), a = max of the reference mean curve."""
    ref, cur = [c[:min(map(len, ref))] for c in ref], [c[:min(map(len, cur))] for c in cur]
    it, cur_it = [e["iter"] for e in ref[0]], [e["iter"] for e in cur[0]]
    ref_mean = np.mean([[e["acc"] for e in c] for c in ref], axis=0)
    cur_mean = np.mean([[e["acc"] for e in c] for c in cur], axis=0)
    a = ref_mean.max()
    s_ref = it[int(np.argmax(ref_mean >= a))]
    reached = np.nonzero(cur_mean >= r / 100 * a)[0]
    if len(reached) == 0:
        return None
    s = cur_it[reached[0]]
    return (1.0 if s_ref == 0 else float("inf")) if s == 0 else s_ref / s


def independent_max_acc(cur):
    """Max Acc written again: the maximum of the seed-averaged curve, and the standard error of the seeds'
    accuracies at its (first) iteration."""
    accs = np.array([[e["acc"] for e in c] for c in cur])  # [seeds, evaluations]
    k = int(np.argmax(accs.mean(0)))
    se = accs[:, k].std(ddof=1) / np.sqrt(len(accs)) if len(accs) > 1 else 0.0
    return accs.mean(0)[k], se
