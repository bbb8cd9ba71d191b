"""A new domain instead of new classes (Sec. 4.3, Fig. 7), the ImageNet stem at 64x64, and the ImageNet subset
builder (Table 2a): on tiny folders in the real on-disk layouts (Adaptiope's data-dir/<domain>/<class>/<image>,
ImageNet's train/<wnid>/ and val/<wnid>/)."""
import csv
import json
import math
import os
import random
import sys

import numpy as np
import pytest
import torch

import data as D
import folder
import train
from conftest import ROOT, curves, independent_max_acc, independent_speedup, synthetic_images, write_folder
from repro import plans, reproduce, table
from resnet import resnet18

sys.path.insert(0, os.path.join(ROOT, "tools"))

DOMAINS = ("product", "real")
SIZE = 32


def write_domains(root, num_classes=3, n=10, size=SIZE, names=DOMAINS):
    """root/<domain>/c<k>/<i>.png, no train/test folders (Adaptiope's layout). The second domain shows the same
    classes with inverted colours: another look, the same labels."""
    from PIL import Image

    for d, dom in enumerate(names):
        y = np.repeat(np.arange(num_classes), n)
        x = synthetic_images(y, num_classes, seed=d, size=size)
        x = 255 - x if d == 1 else x
        for i, (img, k) in enumerate(zip(x, y)):
            os.makedirs(root / dom / f"c{k}", exist_ok=True)
            Image.fromarray(img).save(root / dom / f"c{k}" / f"{i:04d}.png")


def test_domain_split_notation():
    assert D.parse_domains("product_images+real_life") == ["product_images", "real_life"]
    assert D.parse_domains("70+30") is None and D.parse_domains("50+5x10") is None
    assert D.num_tasks("a+b+c") == 3 and D.num_tasks("50+5x10", 100) == 11
    for bad, msg in [("a+70", "cannot read 'a'"), ("a+", "cannot read ''"), ("a+a", "twice"), ("a/b+c", "'a/b'"),
                     ("..+b", "'..'")]:
        with pytest.raises(ValueError, match=msg):
            D.parse_domains(bad)


def test_seeded_split_is_per_class_fixed_and_independent_of_other_classes():
    files = [(f"c{k}/{i:03d}.jpg", k) for k in range(3) for i in range(10)]
    train_f, test_f = folder.seeded_split(files)
    assert len(test_f) == 3 * 2 and len(train_f) == 3 * 8  # 20% of each class
    assert not {r for r, _ in train_f} & {r for r, _ in test_f}
    assert (train_f, test_f) == folder.seeded_split(list(reversed(files)))  # the listing's order does not matter
    # a class removed: every other class keeps its test images (seeded by the class's name)
    assert [t for t in test_f if t[1] != 1] == folder.seeded_split([f for f in files if f[1] != 1])[1]
    assert folder.seeded_split([("c0/a.jpg", 0)]) == ([("c0/a.jpg", 0)], [])  # a lone image trains


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    write_domains(root / "data")
    return root


def test_load_for_split_reads_domains(domains, tmp_path):
    (x, y, dom), (tx, ty, tdom), classes = D.load_for_split("folder", str(domains / "data"), "+".join(DOMAINS))
    assert classes == ["c0", "c1", "c2"] and x.shape == (48, 3, SIZE, SIZE) and tx.shape == (12, 3, SIZE, SIZE)
    assert dom.tolist() == [0] * 24 + [1] * 24 and tdom.tolist() == [0] * 6 + [1] * 6
    d = D.domain_task_data((x, y, dom), (tx, ty, tdom), 3, 2, 1)
    assert d.num_classes == d.num_old_classes == 3 and d.is_old.sum() == 24 and d.test_group.tolist() == tdom.tolist()
    d0 = D.domain_task_data((x, y, dom), (tx, ty, tdom), 3, 2, 0)
    assert len(d0.y) == 24 and not d0.is_old.any() and len(d0.test_y) == 6 and d0.index.tolist() == list(range(24))
    with pytest.raises(ValueError, match="domain folder .*synthetic not found"):
        D.load_for_split("folder", str(domains / "data"), "product+synthetic")
    with pytest.raises(ValueError, match="domains"):  # the domain root read as a class dataset
        D.load_dataset("folder", str(domains / "data"))
    write_folder(tmp_path / "a", num_classes=3)
    write_folder(tmp_path / "b", num_classes=2)
    with pytest.raises(ValueError, match="different class folders"):
        D.load_for_split("folder", str(tmp_path), "a+b")


def run(*argv):
    code = train.cli(["--dataset", "folder", "--width", "8", "--batch-size", "8", "--device", "cpu", "--quiet",
                      *map(str, argv)])
    assert code == 0


def test_domain_run_logs_per_domain_accuracy(domains):
    """An old model on the first domain, then the naive continuation on both: the head keeps its 3 classes,
    and every per-domain accuracy in the log equals one recomputed here from the final model's predictions on
    the test images, found again from docs/choices.md's rule (20% per class, random.Random(f"0/{class}"))."""
    data_dir, split = domains / "data", "+".join(DOMAINS)
    common = ["--data-dir", data_dir, "--split", split, "--iters", 20, "--eval-every", 10]
    run(*common, "--task", 0, "--out", domains / "old")
    run(*common, "--task", 1, "--init", "old", "--old-ckpt", domains / "old" / "ckpt.pt", "--out", domains / "cont")
    old, cont = curves(domains / "old"), curves(domains / "cont")
    assert list(old[-1]["acc_domain"]) == ["product"] and list(cont[-1]["acc_domain"]) == list(DOMAINS)
    assert old[-1]["acc_old"] is None and old[-1]["acc_new"] == old[-1]["acc_domain"]["product"]
    # the continued model starts as the old model: the same accuracy on the old domain (the head is intact)
    assert cont[0]["acc_domain"]["product"] == old[-1]["acc_domain"]["product"]
    header = json.loads(open(domains / "cont" / "log.jsonl").readline())
    assert header["domains"] == list(DOMAINS) and header["num_classes"] == header["num_old_classes"] == 3
    assert header["num_train"] == 48 and header["num_train_old"] == 24 and header["num_test"] == 12
    ckpt = torch.load(domains / "cont" / "ckpt.pt", weights_only=True)
    assert ckpt["model"]["fc.weight"].shape == (3, 64) and ckpt["stem"] == "cifar"

    def images(dom, part):  # ([N,3,H,W] uint8, labels) of one domain's train or test images
        xs, ys = [], []
        for k, c in enumerate(sorted(p.name for p in (data_dir / dom).iterdir() if p.is_dir())):
            files = sorted(os.listdir(data_dir / dom / c))
            random.Random(f"0/{c}").shuffle(files)
            n_test = math.floor(0.2 * len(files) + 0.5)
            for f in sorted(files[:n_test] if part == "test" else files[n_test:]):
                from PIL import Image

                xs.append(np.asarray(Image.open(data_dir / dom / c / f).convert("RGB")).transpose(2, 0, 1))
                ys.append(k)
        return np.stack(xs), np.array(ys)

    every = np.concatenate([images(dom, "train")[0] for dom in DOMAINS]).astype(np.float64) / 255
    mean, std = every.mean((0, 2, 3)), every.std((0, 2, 3))  # the whole training set's channel statistics
    model = resnet18(3, 8)
    model.load_state_dict(ckpt["model"])
    model.eval()
    hits = {}
    for dom in DOMAINS:
        x, y = images(dom, "test")
        x = torch.tensor((x / 255 - mean[:, None, None]) / std[:, None, None], dtype=torch.float32)
        with torch.no_grad():
            hits[dom] = (model(x).argmax(1).numpy() == y)
    final = cont[-1]
    for dom in DOMAINS:
        assert final["acc_domain"][dom] == pytest.approx(100 * hits[dom].mean()), dom
    assert final["acc_old"] == pytest.approx(100 * hits["product"].mean())
    assert final["acc_new"] == pytest.approx(100 * hits["real"].mean())
    assert final["acc"] == pytest.approx(100 * np.concatenate(list(hits.values())).mean())


def test_domain_split_bad_input(domains, capsys):
    for extra, msg in [(["--dataset", "cifar10", "--split", "a+b"], "needs --dataset folder"),
                       (["--split", "product+real", "--task", "2"], "out of range"),
                       (["--split", "product+nowhere"], "domain folder"),
                       (["--per-class", "-1"], "--per-class must be >= 0")]:
        code = train.cli(["--dataset", "folder", "--data-dir", str(domains / "data"), "--iters", "2", "--device",
                          "cpu", "--out", str(domains / "bad"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and len(err.splitlines()) == 1, (extra, err)


FIG7 = ["--plan", "fig7", "--dataset", "folder", "--image-size", "32", "--width", "8", "--batch-size", "16",
        "--iters", "30", "--eval-every", "5", "--seeds", "2", "--device", "cpu"]


def test_fig7_plan(domains, capsys):
    """Fig. 7 end to end: an old model on product images per seed, then Scratch, Naive and Ours on both domains;
    the table's numbers recomputed from the logs, the figure drawn, repro.table agreeing."""
    res, runs = domains / "res7", domains / "runs7"
    argv = FIG7 + ["--data-dir", str(domains / "data"), "--split", "+".join(DOMAINS), "--runs", str(runs),
                   "--results", str(res)]
    assert reproduce.main(argv) == 0
    rows = list(csv.DictReader(open(res / "fig7.csv")))
    assert [r["row"] for r in rows] == ["Scratch", "Naive", "Ours"]
    d = lambda s, lab: runs / "+".join(DOMAINS) / f"seed{s}" / lab  # noqa: E731
    ref = [curves(d(s, "scratch")) for s in (0, 1)]
    for r in rows:
        cur = [curves(d(s, r["label"])) for s in (0, 1)]
        assert int(r["n"]) == 2 and float(r["max_acc"]) == pytest.approx(independent_max_acc(cur)[0], abs=1e-4)
        for k in (99, 100):
            want = independent_speedup(ref, cur, k)
            assert (r[f"L{k}"] == "") if want is None else float(r[f"L{k}"]) == pytest.approx(want)
        for col, dom in (("final_acc_old_domain", "product"), ("final_acc_new_domain", "real")):
            assert float(r[col]) == pytest.approx(np.mean([c[-1]["acc_domain"][dom] for c in cur]), abs=1e-4)
    header = json.loads(open(d(0, plans.OURS) / "log.jsonl").readline())
    assert header["config"]["init"] == "shrink_perturb" and header["config"]["sampler"] == "easy_hard"
    md = (res / "fig7.md").read_text()
    assert "final acc real" in md and (res / "fig7.png").exists()
    # the two verdicts, from the table's own numbers by the rules written in the README's choices
    n99, o99 = (None if rows[k]["L99"] == "" else float(rows[k]["L99"]) for k in (1, 2))
    if n99 is None:
        speed = "not nearly as fast (it never gets there)"
    elif o99 is None:
        speed = "faster (Ours never gets there)"
    else:
        speed = ("as fast or faster" if n99 >= o99 else "nearly as fast" if n99 >= 2 / 3 * o99
                 else "not nearly as fast")
    gap = float(rows[2]["max_acc"]) - float(rows[1]["max_acc"])
    margin = np.hypot(float(rows[2]["max_acc_se"]), float(rows[1]["max_acc_se"]))
    assert f"Naive is **{speed}**" in md
    assert f"**{'higher' if gap > margin else 'not higher'}** beyond one standard error" in md
    # repro.table reads the same logs to the same L99
    capsys.readouterr()
    assert table.main([str(p) for p in (runs / "+".join(DOMAINS)).glob("seed*/*") if p.name != "old"]
                        + ["--reference", "scratch", "--csv", str(domains / "s.csv")]) == 0
    ours = next(r for r in csv.DictReader(open(domains / "s.csv")) if r["label"] == plans.OURS)
    for k in ("L99", "L100", "max_acc"):
        assert (ours[k] == rows[2][k] == "") or float(ours[k]) == pytest.approx(float(rows[2][k]), rel=1e-5), k
    # --list: 2 x (old + 3 rows); the default resolution of fig7 is Adaptiope's 112 px, with the ImageNet stem
    listed = [a for a in argv if a not in ("--image-size", "32")]
    capsys.readouterr()
    assert reproduce.main(listed + ["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all("--image-size 112 --stem imagenet --split product+real" in x for x in lines)


def test_fig7_refuses_a_class_split(domains, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(FIG7 + ["--data-dir", str(domains / "data"), "--split", "2+1", "--list"])
    assert e.value.code == 2 and "fig7 needs a split of two domains" in capsys.readouterr().err


def test_imagenet_stem_at_64px(tmp_path, capsys):
    """--image-size 64 picks the ImageNet stem (7x7 stride 2 + max-pool: the first stage sees 16x16), crops
    pad 8 pixels, the checkpoint records the stem and a continuation with the other stem is refused."""
    m = resnet18(5, 8, "imagenet")
    assert m.stem(torch.zeros(2, 3, 64, 64)).shape == (2, 8, 16, 16) and m.conv1.kernel_size == (7, 7)
    assert resnet18(5, 8).stem(torch.zeros(2, 3, 64, 64)).shape == (2, 8, 64, 64)
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    assert D.Loader(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), torch.zeros(4), "cpu").pad == 8
    write_folder(tmp_path / "data", num_classes=4, n_train=4, n_test=2, size=64)
    common = ["--data-dir", tmp_path / "data", "--image-size", 64, "--split", "2+2", "--iters", 4, "--eval-every", 2]
    run(*common, "--task", 0, "--out", tmp_path / "old")
    ckpt = torch.load(tmp_path / "old" / "ckpt.pt", weights_only=True)
    assert ckpt["stem"] == "imagenet" and ckpt["model"]["conv1.weight"].shape == (8, 3, 7, 7)
    assert json.loads(open(tmp_path / "old" / "log.jsonl").readline())["config"]["stem"] == "imagenet"
    code = train.cli(["--dataset", "folder", "--width", "8", "--batch-size", "8", "--device", "cpu", "--quiet",
                      *map(str, common), "--task", "1", "--init", "old", "--old-ckpt",
                      str(tmp_path / "old" / "ckpt.pt"), "--stem", "cifar", "--out", str(tmp_path / "cont")])
    assert code == 2 and "different stem" in capsys.readouterr().err
    # the driver passes the size and the stem through and names the runs folder by the size
    capsys.readouterr()
    assert reproduce.main(["--plan", "table2a", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--split",
                           "2+2", "--seeds", "1", "--width", "8", "--image-size", "64", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all("--image-size 64 --stem imagenet" in x and "-64px/2+2/" in x for x in lines)


def fake_imagenet(root, wnids, flat_val=False):
    from PIL import Image

    img = Image.fromarray(np.full((8, 8, 3), 100, np.uint8))
    for w in wnids:
        for split, n in (("train", 2), ("val", 1)):
            d = root / split / ("" if flat_val and split == "val" else w)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                img.save(d / f"{w}_{i}.JPEG", format="JPEG")


def test_make_subset(tmp_path, capsys):
    import make_subset

    wnids = [f"n{k:08d}" for k in range(6)]
    fake_imagenet(tmp_path / "in", wnids)
    make = lambda *a: make_subset.main(["--imagenet", str(tmp_path / "in"), *map(str, a)])  # noqa: E731
    assert make("--classes", 3, "--out", tmp_path / "s3") == 0
    want = sorted(wnids)
    random.Random(0).shuffle(want)  # docs/choices.md's rule: the first N of the seeded permutation of the sorted ids
    assert (tmp_path / "s3" / "classes.txt").read_text().split() == want[:3]
    for split, source in (("train", "train"), ("test", "val")):  # ImageNet's val is the test set
        assert sorted(os.listdir(tmp_path / "s3" / split)) == sorted(want[:3])
        got, src = tmp_path / "s3" / split / want[0], tmp_path / "in" / source / want[0]
        assert os.path.realpath(got) == os.path.realpath(src)
    assert make("--classes", 2, "--out", tmp_path / "s2", "--copy") == 0  # the smaller subset is a prefix
    assert (tmp_path / "s2" / "classes.txt").read_text().split() == want[:2]
    assert not os.path.islink(tmp_path / "s2" / "train" / want[0])
    (tmp_path / "list.txt").write_text(f"{wnids[5]}\n{wnids[1]}\n")
    assert make("--classes", tmp_path / "list.txt", "--out", tmp_path / "sl") == 0
    (x, y), (tx, ty), classes = D.load_dataset("folder", str(tmp_path / "sl"))  # what train.py reads
    assert classes == sorted([wnids[5], wnids[1]]) and len(y) == 4 and len(ty) == 2
    fake_imagenet(tmp_path / "flat", wnids, flat_val=True)
    (tmp_path / "bad.txt").write_text("n99999999\n")
    for argv, msg in [(["--classes", 3, "--out", tmp_path / "s3"], "exists"),
                      (["--classes", 7, "--out", tmp_path / "x"], "has 6 classes"),
                      (["--classes", tmp_path / "bad.txt", "--out", tmp_path / "x"], "not in the train folder"),
                      (["--imagenet", tmp_path / "flat", "--classes", 2, "--out", tmp_path / "x"], "class folders")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            make(*argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1, (argv, err)
    assert not os.path.exists(tmp_path / "x") and not list(tmp_path.glob("*.tmp*"))
