"""data.py: loading from the real on-disk formats, split notation, class remapping, the device loader."""
import pytest
import torch

from conftest import write_cifar, write_folder
from data import (Loader, apply_crops, channel_stats, class_order, load_dataset, parse_split, predict, random_crops,
                  task_data)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_cifar_from_pickles(tmp_path, no_checksum, name):
    (xtr, ytr), (xte, yte), names = write_cifar(tmp_path, name, n_train=3, n_test=2)
    (tx, ty), (vx, vy), classes = load_dataset(name, str(tmp_path), download=False)
    assert tx.dtype == torch.uint8 and tx.shape == (len(ytr), 3, 32, 32)
    assert torch.equal(tx, torch.from_numpy(xtr).permute(0, 3, 1, 2))  # HWC on disk -> CHW tensors
    assert ty.dtype == torch.int64 and ty.tolist() == ytr.tolist()
    assert torch.equal(vx, torch.from_numpy(xte).permute(0, 3, 1, 2)) and vy.tolist() == yte.tolist()
    assert classes == names


def test_load_folder_and_cache(tmp_path):
    ref = write_folder(tmp_path, num_classes=3, n_train=4, n_test=2)
    (tx, ty), (vx, vy), classes = load_dataset("folder", str(tmp_path))
    assert classes == ["c0", "c1", "c2"]
    assert torch.equal(tx, torch.from_numpy(ref["train"][0]).permute(0, 3, 1, 2))  # PNG is lossless
    assert ty.tolist() == ref["train"][1].tolist() and vy.tolist() == ref["test"][1].tolist()
    cache = tmp_path / ".decoded-32px.pt"
    assert cache.exists()
    # second load reads the cache (proved by tampering with it: a changed folder must invalidate it)
    blob = torch.load(cache, weights_only=True)
    blob["train_x"] = torch.zeros_like(blob["train_x"])
    torch.save(blob, cache)
    assert load_dataset("folder", str(tmp_path))[0][0].sum() == 0
    write_folder(tmp_path, num_classes=4, n_train=4, n_test=2)  # a new class folder: cache is stale
    (tx2, _), _, classes2 = load_dataset("folder", str(tmp_path))
    assert classes2 == ["c0", "c1", "c2", "c3"] and tx2.sum() > 0


def test_load_folder_resizes(tmp_path):
    write_folder(tmp_path, num_classes=2, n_train=2, n_test=1, size=48)
    (tx, _), (vx, _), _ = load_dataset("folder", str(tmp_path), image_size=32)
    assert tx.shape == (4, 3, 32, 32) and vx.shape == (2, 3, 32, 32)


def test_load_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(ValueError, match="train"):
        load_dataset("folder", str(tmp_path))


def test_parse_split():
    assert parse_split("70+30", 100) == [70, 30]
    assert parse_split("80+10+10", 100) == [80, 10, 10]
    assert parse_split("50+5x10", 100) == [50] + [5] * 10
    assert parse_split("8+2", 10) == [8, 2]
    for bad, msg in [("70+", "cannot read"), ("a+b", "cannot read"), ("70+0", "zero"), ("50+0x3", "zero"),
                     ("70+40", "needs 110"), ("", "empty"), ("7-3", "cannot read")]:
        with pytest.raises(ValueError, match=msg):
            parse_split(bad, 100)


def test_class_order_is_a_seeded_permutation():
    a, b, c = class_order(100, 0), class_order(100, 0), class_order(100, 1)
    assert sorted(a) == list(range(100)) and a == b and a != c


def test_task_data_remaps_and_accumulates():
    n_classes = 10
    y = torch.arange(n_classes).repeat_interleave(3)  # 3 examples per original class
    x = y.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8).contiguous()  # pixel value = original class
    train, test = (x, y), (x[::3], y[::3])
    groups, order = parse_split("5+3+2", n_classes), class_order(n_classes, 7)
    seen_labels = []
    for t in range(3):
        d = task_data(train, test, groups, order, t)
        n = sum(groups[: t + 1])
        assert d.num_classes == n and d.num_old_classes == sum(groups[:t])
        assert sorted(d.y.unique().tolist()) == list(range(n))  # complete and contiguous
        assert sorted(d.test_y.unique().tolist()) == list(range(n))
        # the remap is consistent: new label k is original class order[k], for every example
        assert all(order[k] == int(px) for k, px in zip(d.y.tolist(), d.x[:, 0, 0, 0].tolist()))
        assert torch.equal(d.is_old, d.y < sum(groups[:t]))
        assert torch.equal(train[1][d.index], torch.as_tensor(order)[d.y])
        seen_labels.append(set(d.y[~d.is_old].tolist()))
    assert all(not (a & b) for i, a in enumerate(seen_labels) for b in seen_labels[i + 1:])  # groups disjoint
    # the old examples of task t are task t-1's training set, in the same order (learning speed carries over)
    d1, d2 = task_data(train, test, groups, order, 1), task_data(train, test, groups, order, 2)
    assert len(d1.index) == 3 * 8 and int(d2.is_old.sum()) == len(d1.index)  # 8 classes seen by task 1, 3 each
    assert torch.equal(d2.index[d2.is_old], d1.index)
    with pytest.raises(ValueError, match="out of range"):
        task_data(train, test, groups, order, 3)


def test_crops_match_padded_windows():
    torch.manual_seed(0)
    B, H = 400, 8
    x = torch.randint(1, 256, (B, 3, H, H), dtype=torch.uint8)  # no zeros: padding pixels are recognisable
    g = torch.Generator().manual_seed(0)
    out = apply_crops(x, *random_crops(B, g, pad=4), pad=4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips, offsets = 0, set()
    for i in range(B):  # every output is one of the 9x9 windows of the padded image, maybe mirrored
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                if torch.equal(out[i], (padded[i, :, dy:dy + H, dx:dx + H].flip(2) if f else
                                        padded[i, :, dy:dy + H, dx:dx + H]))]
        assert hits, f"example {i} is not a crop of its padded image"
        dy, dx, f = hits[0]
        flips += f
        offsets.add((dy, dx))
    assert abs(flips / B - 0.5) < 0.1  # flips about half the time
    assert len(offsets) > 60  # offsets cover most of the 81 possible windows


def test_loader_batch_indices_match_labels_and_normalisation():
    y = torch.arange(50) % 5
    x = (y * 40).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).to(torch.uint8).contiguous()
    loader = Loader(x, y, "cpu", seed=0)
    idx = torch.tensor([3, 17, 42, 8])
    imgs, labels, out_idx = loader.batch(idx)
    assert torch.equal(out_idx, idx) and torch.equal(labels, y[idx])
    assert imgs.is_contiguous(memory_format=torch.channels_last) and imgs.dtype == torch.float32
    centre = imgs[:, :, 12:20, 12:20]  # never padding with a 4-pixel shift: the example's own value
    expect = ((y[idx] * 40).float() / 255 - loader.mean.view(-1)[0]) / loader.std.view(-1)[0]
    assert torch.allclose(centre[:, 0].mean((1, 2)), expect, atol=1e-5)
    mean, std = channel_stats(x)
    v = x.float() / 255
    assert torch.allclose(mean, v.mean((0, 2, 3))) and torch.allclose(std, v.std((0, 2, 3), unbiased=False))


def test_predict_without_augmentation():
    y = torch.arange(20) % 2
    x = (y * 200).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).to(torch.uint8).contiguous()
    loader = Loader(x, y, "cpu")

    class Bright(torch.nn.Module):  # predicts class 1 for bright images
        def forward(self, z):
            m = z.mean((1, 2, 3))
            return torch.stack([-m, m], 1)

    assert torch.equal(predict(Bright(), x, loader, batch_size=7), y)
