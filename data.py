"""Datasets as uint8 tensors, the paper's class splits, and a GPU-resident batch loader (Sec. 2.1, App. A.2).

Class-incremental protocol (Sec. 2.1): the classes are permuted with a seed and cut into groups, e.g.
CIFAR-100 "70+30" or "50+5x10". Task t trains on the cumulative data of groups 0..t (old and new data
together) and is tested on every class seen so far. Labels are remapped so that group 0's classes are
0..k0-1, group 1's follow, and so on: a model of task t has exactly as many outputs as classes seen, and
growing the head means appending rows.

Domain-incremental protocol (Sec. 4.3, Fig. 7): a split of domain names, e.g. "product_images+real_life",
reads data_dir/<domain>/ as one folder dataset per domain (the same classes in each); task t trains on the
examples of domains 0..t, every class from the start (the head never grows), and is tested on the union of
the seen domains' test sets.

Speed (docs/speed.md): the training set lives on the device as uint8 [N,3,H,W]; every batch is gathered,
randomly cropped (zero padding of 1/8 of the side: 4 pixels at 32x32) and flipped per example on the device,
normalised and returned in channels_last. Nothing in a training step reads a value back to the host.
"""
import hashlib
import os
import re
from collections import namedtuple

import numpy as np
import torch

import cifar
from folder import holds_domains, load_folder, subfolders

DATASETS = (*cifar.RELEASES, "folder")

TaskData = namedtuple("TaskData", "x y is_old index test_x test_y num_classes num_old_classes test_group")
TaskData.__doc__ = """The data of one task. x uint8 [N,3,H,W], y int64 [N] (remapped labels), is_old bool [N]
(examples of groups or domains < t), index int64 [N] (positions in the full training set, to carry learning
speed from one task to the next), test_x/test_y (test set of all classes or domains seen up to t),
num_classes (seen up to t), num_old_classes (seen up to t-1; all of them in a domain split), test_group int64
[N_test] (the task whose group or domain each test example belongs to: old ones are < t)."""


# ----------------------------------------------------------------------------------------------------------
# loading

def load_dataset(name, data_dir, image_size=32, download=True):
    """Returns ((train_x uint8 [N,3,H,W], train_y int64 [N]), (test_x, test_y), class_names).

    cifar10 / cifar100 are the authors' python release, every file checked against its md5, resized once to
    image_size (cifar.load). folder reads data_dir/train/<class>/* and data_dir/test/<class>/*, or
    data_dir/<class>/* cut per class into train and test (folder.seeded_split), resized to image_size x
    image_size (the whole image, squashed, as Downsampled ImageNet does), and caches the decoded tensors in one
    file next to the data (or, if that folder is read-only, in ~/.cache/same-accuracy/; see folder.cache_paths)."""
    if name in cifar.RELEASES:
        return cifar.load(name, data_dir, image_size, download)
    if name == "folder":
        return load_folder(data_dir, image_size)
    raise ValueError(f"unknown dataset '{name}' (choose from {', '.join(DATASETS)})")


SUBSET_SEED = 0  # one fixed subset for every run, whatever the run's own seed: runs of a table share their data


def take_per_class(train, per_class, class_names, where=""):
    """The first per_class training images of each class in a permutation seeded by SUBSET_SEED, in their
    original order (a smaller dataset at the same class balance; 0 keeps all). train: (x uint8 [N,3,H,W],
    y int64 [N]). Raises ValueError if a class has fewer images."""
    if not per_class:
        return train
    x, y = train
    g = torch.Generator().manual_seed(SUBSET_SEED)
    perm = torch.randperm(len(y), generator=g)  # [N]; one draw, so a class's choice does not depend on others'
    keep = []
    for c in range(len(class_names)):
        mine = perm[y[perm] == c]  # this class's positions, in permuted order
        if len(mine) < per_class:
            raise ValueError(f"--per-class {per_class}: class '{class_names[c]}'{' of ' + where if where else ''} "
                             f"has only {len(mine)} training images")
        keep.append(mine[:per_class])
    keep = torch.cat(keep).sort().values
    return x[keep], y[keep]


def load_for_split(name, data_dir, split, image_size=32, download=True, per_class=0):
    """The data a split trains on: load_dataset's for a class split. For a domain split (Sec. 4.3) each
    data_dir/<domain> is a folder dataset (train/ and test/, or class folders cut by folder.seeded_split), all with
    the same classes, concatenated in the split's order, with a third tensor: the domain of each example.
    per_class > 0 keeps that many training images of each class (of each domain): take_per_class.
    Returns ((x, y[, domain]), (test_x, test_y[, test_domain]), class_names)."""
    domains = parse_domains(split)
    if domains is None:
        train, test, class_names = load_dataset(name, data_dir, image_size, download)
        return take_per_class(train, per_class, class_names), test, class_names
    if name != "folder":
        raise ValueError(f"the domain split '{split}' needs --dataset folder (data-dir/<domain>/<class>/<image>)")
    for dom in domains:  # all of them before decoding any
        if not os.path.isdir(os.path.join(data_dir, dom)):
            raise ValueError(f"domain folder {os.path.join(data_dir, dom)} not found")
    parts = []
    for dom in domains:
        train, test, class_names = load_folder(os.path.join(data_dir, dom), image_size)
        parts.append((take_per_class(train, per_class, class_names, dom), test, class_names))
        if parts[-1][2] != parts[0][2]:
            raise ValueError(f"domains {domains[0]} and {dom} have different class folders")

    def union(i):  # train (0) or test (1) of every domain, and the domain of each example
        return (torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts]),
                torch.cat([torch.full((len(p[i][1]),), k, dtype=torch.int64) for k, p in enumerate(parts)]))

    return union(0), union(1), parts[0][2]


def num_classes_of(name, data_dir, split=None):
    """The number of classes, without loading anything (None where it cannot be known yet): checks that
    need it (a split, a task) can run before the data is downloaded or decoded."""
    if name != "folder":
        return {"cifar10": 10, "cifar100": 100}.get(name)
    try:
        domains = parse_domains(split)
    except ValueError:
        return None
    root = os.path.join(data_dir, domains[0]) if domains else data_dir
    if os.path.isdir(os.path.join(root, "train")):
        root = os.path.join(root, "train")
    subdirs = subfolders(root) if os.path.isdir(root) else []
    return None if not subdirs or holds_domains(root, subdirs) else len(subdirs)  # None: loading says why


def identity(train, test, class_names, domains=None, per_class=0):
    """What makes two datasets the same for a run's results: class names (and domain names), example counts,
    image size and a hash of every image, label (and domain) (sha256 of CIFAR-100 takes about 0.1 s).
    Recorded in logs and checkpoints, so that a finished run is only reused for, and a checkpoint only
    continued on, the same data."""
    h = hashlib.sha256()
    for x, *labels in (train, test):
        h.update(repr((tuple(x.shape), str(x.dtype))).encode())
        h.update(x.contiguous().numpy())
        for y in labels:
            h.update(y.to(torch.int64).contiguous().numpy())
    out = {"class_names": list(class_names), "num_train": len(train[1]), "num_test": len(test[1]),
           "image_size": list(train[0].shape[2:]), "sha256": h.hexdigest()}
    out = out if not per_class else {**out, "per_class": per_class}
    return out if domains is None else {**out, "domains": list(domains)}


def identity_diff(got, want):
    """The first field (in words: 'class names', 'sha256') in which two identities differ, or None if they are
    the same. A missing identity (None) differs from any."""
    got = got or {}
    if got == want:
        return None
    keys = [*want, *(k for k in got if k not in want)]
    return next(k for k in keys if got.get(k) != want.get(k)).replace("_", " ")


# ----------------------------------------------------------------------------------------------------------
# class splits

def parse_domains(spec):
    """A domain split (Sec. 4.3): "product_images+real_life" -> ["product_images", "real_life"], the folders
    of data_dir/<domain>/ in task order. None for a class split (its terms are numbers: parse_split)."""
    if not isinstance(spec, str):
        return None
    terms = spec.replace(" ", "").split("+")
    numbers = [t for t in terms if re.fullmatch(r"\d+(?:[xX]\d+)?", t)]
    if not [t for t in terms if t and t not in numbers]:
        return None  # numbers (and empty terms): a class split, parse_split reads or refuses it
    if numbers:
        odd = next(t for t in terms if t not in numbers)
        raise ValueError(f"split '{spec}': cannot read '{odd}' (a split is class counts N or NxK like 70+30, or "
                         f"domain folders like product_images+real_life, not both)")
    for t in terms:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", t) or t in (".", ".."):
            raise ValueError(f"split '{spec}': cannot read '{t}' (a domain is a folder name of letters, digits, "
                             f"'_', '-', '.')")
    if len(set(terms)) != len(terms):
        raise ValueError(f"split '{spec}' names a domain twice")
    return terms


def num_tasks(spec, num_classes=10 ** 9):
    """Tasks of a class or domain split; raises ValueError on a malformed one (or one too large for
    num_classes)."""
    domains = parse_domains(spec)
    return len(domains) if domains else len(parse_split(spec, num_classes))


def parse_split(spec, num_classes):
    """The paper's split notation -> list of group sizes: "70+30" -> [70, 30], "80+10+10",
    "50+5x10" -> [50, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5] (Fig. 6's 50 + ten tasks of 5)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"split '{spec}' is empty; write it like 70+30 or 50+5x10")
    groups = []
    for term in spec.replace(" ", "").split("+"):
        m = re.fullmatch(r"(\d+)(?:[xX](\d+))?", term)
        if not m:
            raise ValueError(f"split '{spec}': cannot read '{term}' (terms are N or NxK, joined by '+')")
        size, times = int(m.group(1)), int(m.group(2) or 1)
        if size == 0 or times == 0:
            raise ValueError(f"split '{spec}': group '{term}' has zero classes")
        groups += [size] * times
    if sum(groups) > num_classes:
        raise ValueError(f"split '{spec}' needs {sum(groups)} classes but the dataset has {num_classes}")
    return groups


def class_order(num_classes, split_seed):
    """A seeded permutation: order[k] is the original class that becomes label k."""
    g = torch.Generator().manual_seed(int(split_seed))
    return torch.randperm(num_classes, generator=g).tolist()


def task_data(train, test, groups, order, task):
    """The cumulative data of task `task` (groups 0..task), with labels remapped through `order`."""
    if not 0 <= task < len(groups):
        raise ValueError(f"task {task} is out of range: the split has tasks 0..{len(groups) - 1}")
    num_classes, num_old = sum(groups[: task + 1]), sum(groups[:task])
    remap = torch.full((len(order),), -1, dtype=torch.int64)
    remap[torch.as_tensor(order)] = torch.arange(len(order))  # original class -> new label

    def select(x, y):
        new = remap[y]
        keep = (new >= 0) & (new < num_classes)
        return x[keep], new[keep], keep.nonzero().squeeze(1)

    x, y, index = select(*train)
    test_x, test_y, _ = select(*test)
    ends = torch.tensor(groups[: task + 1]).cumsum(0)  # label k belongs to the first group whose end is > k
    return TaskData(x, y, y < num_old, index, test_x, test_y, num_classes, num_old,
                    torch.bucketize(test_y, ends, right=True))


def domain_task_data(train, test, num_classes, num_domains, task):
    """Task `task` of a domain split (Sec. 4.3): the examples of domains 0..task with their own labels (every
    task has every class: num_old_classes = num_classes, the head never grows), old = of domains < task, the
    test set the union of the seen domains' test sets. train, test: (x, y, domain) of load_for_split."""
    if not 0 <= task < num_domains:
        raise ValueError(f"task {task} is out of range: the split has tasks 0..{num_domains - 1}")
    (x, y, dom), (test_x, test_y, test_dom) = train, test
    keep, test_keep = dom <= task, test_dom <= task
    return TaskData(x[keep], y[keep], dom[keep] < task, keep.nonzero().squeeze(1), test_x[test_keep],
                    test_y[test_keep], num_classes, num_classes, test_dom[test_keep])


def select_task(train, test, num_classes, split, split_seed, task):
    """Task `task`'s data as train.py trains on it -> (groups, class order, TaskData). A class split (Sec. 2.1)
    takes its groups in the seeded class order (task_data); a domain split (Sec. 4.3) has every class in every
    task, the labels in the class folders' order (domain_task_data), and its groups are the domains."""
    domains = parse_domains(split)
    if domains:
        order = list(range(num_classes))
        return domains, order, domain_task_data(train, test, num_classes, len(domains), task)
    groups, order = parse_split(split, num_classes), class_order(num_classes, split_seed)
    return groups, order, task_data(train, test, groups, order, task)


# ----------------------------------------------------------------------------------------------------------
# the device-resident loader

def channel_stats(x, device=None):
    """Per-channel mean and std of uint8 images [N,3,H,W], in [0,1] units, exact: from integer histograms
    of the 256 values (on `device` if given; a fraction of a second for 50,000 images)."""
    hist = torch.zeros(x.shape[1], 256, dtype=torch.int64, device=device or x.device)
    for chunk in x.split(8192):
        chunk = chunk.to(hist.device)
        for c in range(x.shape[1]):
            hist[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    v = torch.arange(256, dtype=torch.float64, device=hist.device) / 255
    n = hist[0].sum().double()
    mean = (hist.double() * v).sum(1) / n
    var = (hist.double() * v * v).sum(1) / n - mean * mean
    return mean.float().cpu(), var.clamp(min=0).sqrt().float().cpu()


def random_crops(batch_size, generator, pad=4):
    """Per-example crop offsets dy, dx int64 [B,1] uniform in 0..2*pad and flips bool [B,1] with probability 1/2."""
    dev = generator.device
    dy, dx = torch.randint(0, 2 * pad + 1, (2, batch_size, 1), device=dev, generator=generator)
    flip = torch.rand((batch_size, 1), device=dev, generator=generator) < 0.5
    return dy, dx, flip


def apply_crops(x, dy, dx, flip, pad=4):
    """Crop each image of x uint8 [B,C,H,W], zero-padded by `pad`, at (dy, dx) and flip it where `flip`: one
    gather does both. Returns uint8 [B,C,H,W]. With random_crops' draws: torchvision's RandomCrop(H,
    padding=pad) + RandomHorizontalFlip(0.5) applied to each image."""
    B, C, H, W = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # [B,C,H+2p,W+2p], zeros like torchvision
    rows = dy + torch.arange(H, device=dev)  # [B,H]
    cols = torch.arange(W, device=dev)
    cols = dx + torch.where(flip, cols.flip(0), cols)  # [B,W]; a flipped crop reads its columns backwards
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


class Loader:
    """The training set on the device as uint8, and its augmented, normalised batches.

    batch(idx) -> (images float [B,3,H,W] in memory_format, labels int64 [B], idx int64 [B])."""

    def __init__(self, x, y, device, seed=0, mean=None, std=None, memory_format=torch.channels_last):
        self.x = x.to(device)  # uint8 [N,3,H,W]
        self.memory_format = memory_format
        self.pad = x.shape[-1] // 8  # crop padding: 4 px at 32 as the paper's CIFAR, 14 at 112 (same relative shift)
        self.y = y.to(device)  # int64 [N]
        self.device = torch.device(device)
        if mean is None:
            mean, std = channel_stats(self.x)
        self.mean = mean.to(device).view(1, -1, 1, 1)
        self.std = std.to(device).view(1, -1, 1, 1)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def normalize(self, x):  # uint8 [B,3,H,W] -> float [B,3,H,W] in the model's memory format
        x = (x.float() / 255 - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def batch(self, idx, crops=None):
        """crops: (dy, dx, flip) from random_crops, or None to draw them from the loader's generator."""
        x = self.x[idx]
        x = apply_crops(x, *(crops or random_crops(len(idx), self.generator, self.pad)), self.pad)
        return self.normalize(x), self.y[idx], idx


EVAL_BATCH = {"cuda": 1000, "cpu": 200}  # one CPU thread's caches favour small batches (1.3x, width 16, 16 px)


@torch.no_grad()
def predict(model, x, loader, batch_size=None, autocast_dtype=None, y=None):
    """Predicted labels int64 [N] for uint8 images x [N,3,H,W] (on the loader's device), without augmentation;
    given labels y, also the summed cross-entropy (fp32, a device scalar) from the same pass."""
    batch_size = batch_size or EVAL_BATCH.get(loader.device.type, 1000)
    out, loss = [], torch.zeros((), device=x.device)
    for i, chunk in enumerate(x.split(batch_size)):
        with torch.autocast(loader.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(loader.normalize(chunk))
        out.append(logits.argmax(1))
        if y is not None:
            loss += torch.nn.functional.cross_entropy(logits.float(), y[i * batch_size:(i + 1) * batch_size],
                                                      reduction="sum")
    return torch.cat(out) if y is None else (torch.cat(out), loss)
