"""CIFAR-10 and CIFAR-100 (Sec. 2.1) as uint8 tensors, from their authors' python release
(https://www.cs.toronto.edu/~kriz/cifar.html): downloaded once, every file checked against its md5, optionally
resized (docs/choices.md, 32).

    (train_x, train_y), (test_x, test_y), class_names = cifar.load("cifar100", "data")   # uint8 [N,3,32,32]
"""
import hashlib
import http.client
import os
import pickle
import tarfile
import urllib.request
from collections import namedtuple

import numpy as np
import torch

from runlog import replace_atomic

Release = namedtuple("Release", "url md5 folder label_key meta names_key meta_md5 train test")
Release.__doc__ = """The archive and its md5, the folder it unpacks to, the key of the labels in a batch file, the
class-names file, its key and md5, and the training and test batch files as (name, md5) pairs."""

RELEASES = {  # the same files and md5s as torchvision's CIFAR10 / CIFAR100 classes
    "cifar10": Release("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                       "cifar-10-batches-py", "labels", "batches.meta", "label_names",
                       "5ff9c542aee3614f3951f8cda6e48888",
                       train=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                              ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                              ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                              ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                              ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
                       test=(("test_batch", "40351d587109b95175f43aff81a1287e"),)),
    "cifar100": Release("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", "fine_labels", "meta",
                        "fine_label_names", "7973b15100ade9c7d40fb424638fde48",
                        train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
                        test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),)),
}


def load(name, data_dir, image_size=32, download=True):
    """((x uint8 [N,3,S,S], y int64 [N]) of the training set, the same of the test set, class names), S =
    image_size, from data_dir/<the release's folder>/. If a file is missing or does not match its md5, the
    release is downloaded and unpacked first (with download), else a ValueError says so. The batch files are
    pickles of {"data": uint8 [n,3072] (the R, then G, then B plane of each image), label_key: [n] ints}."""
    r = RELEASES[name]
    base = os.path.join(data_dir, r.folder)

    def intact():
        return all(file_md5_is(os.path.join(base, f), md5) for f, md5 in ((r.meta, r.meta_md5),) + r.train + r.test)

    if not intact():
        if not download:
            raise ValueError(f"{name} not found, or not its authors' files, in {base} (drop --no-download to "
                             "download it)")
        fetch(r.url, r.md5, data_dir)
        if not intact():
            raise ValueError(f"{name}: the files unpacked into {base} do not match their md5")
    splits = []
    for files in (r.train, r.test):
        blobs = [unpickle(os.path.join(base, f)) for f, _ in files]
        x = np.concatenate([b["data"] for b in blobs]).reshape(-1, 3, 32, 32)  # [N,3,32,32]
        y = np.concatenate([b[r.label_key] for b in blobs])  # [N]
        splits.append((resize_uint8(torch.from_numpy(x.astype(np.uint8, copy=False)), image_size),
                       torch.as_tensor(y, dtype=torch.int64)))
    return splits[0], splits[1], list(unpickle(os.path.join(base, r.meta))[r.names_key])


def file_md5_is(path, md5):
    if not os.path.isfile(path):
        return False
    h = hashlib.md5(usedforsecurity=False)  # a checksum: allowed where FIPS forbids md5 for security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == md5


def unpickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # written by Python 2: its str holds the array bytes


def fetch(url, md5, data_dir):
    """Download the archive to data_dir (atomically, and only if it matches md5; kept, so a damaged file is
    unpacked again without a download) and unpack it there."""
    archive = os.path.join(data_dir, url.rsplit("/", 1)[1])
    if not file_md5_is(archive, md5):
        os.makedirs(data_dir, exist_ok=True)
        print(f"downloading {url} to {archive}", flush=True)
        replace_atomic(archive, lambda tmp: download(url, md5, tmp))
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(data_dir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def download(url, md5, path):
    try:
        urllib.request.urlretrieve(url, path)
    except http.client.HTTPException as e:  # a response cut short or garbled: not an OSError, unlike the rest
        raise OSError(f"{url}: {type(e).__name__}: {e}") from None
    if not file_md5_is(path, md5):
        raise ValueError(f"{url}: the download does not match its md5")


def resize_uint8(x, size, chunk=4096):
    """uint8 images [N,C,H,W] -> uint8 [N,C,size,size]: bilinear with antialiasing, rounded, as torchvision's
    Resize(size, antialias=True) does on tensors. Once at load, so a smaller CIFAR costs nothing per step."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = [torch.nn.functional.interpolate(c.float(), size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True).round_().clamp_(0, 255).to(torch.uint8)
           for c in x.split(chunk)]
    return torch.cat(out) if out else x.new_empty((0, x.shape[1], size, size))
