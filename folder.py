"""Image folders as uint8 tensors (Sec. 2.1, 4.3; Table 2a's ImageNet-100 / 200 and Adaptiope): the listing of
data_dir/train/<class>/* and data_dir/test/<class>/*, or of data_dir/<class>/* cut per class by a seeded split
(a dataset without its own, as Adaptiope), decoding by worker processes, and a cache of the decoded tensors.

The cache holds a fingerprint of every file's name, size and modification time: a changed folder is decoded
again. It is written atomically, next to the data or, where that folder is read-only, under ~/.cache.
"""
import hashlib
import math
import os
import random
import sys

import numpy as np
import torch

from runlog import replace_atomic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")

# the train/test split of a folder without train/ and test/ folders (Adaptiope's own layout): per class, 20% of
# the images are test images, chosen with this seed (seeded_split)
TEST_FRACTION, TEST_SEED = 0.2, 0


def _is_junk(name):
    """An archiver's or a desktop's side file or folder, not data: macOS's __MACOSX/ and ._* resource forks,
    and hidden names (.DS_Store, .ipynb_checkpoints/)."""
    return name == "__MACOSX" or name.startswith(".")


def subfolders(root):
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not _is_junk(d))


def _images(folder):
    return [f for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTENSIONS) and not _is_junk(f)]


def _list_folder(root):
    classes = subfolders(root)
    files = []
    for k, c in enumerate(classes):
        images = _images(os.path.join(root, c))
        if not images:  # a class the model could never learn (or never be tested on) is a mistake, not data
            raise ValueError(f"class folder {os.path.join(root, c)} holds no images")
        files += [(os.path.join(c, f), k) for f in images]
    return classes, files


def seeded_split(files, fraction=TEST_FRACTION, seed=TEST_SEED):
    """A dataset without its own train/test split (Adaptiope): per class, the files sorted by name and shuffled
    with random.Random(f"{seed}/{class folder}"), the first floor(fraction * n + 0.5) (at least 1 if n >= 2)
    are test images, the rest train. Seeded by the class's name, not its index, so adding a class changes no
    other class's split. files: [(class/file, label)] -> (train files, test files), each sorted."""
    by_class = {}
    for rel, k in files:
        by_class.setdefault(k, []).append(rel)
    train, test = [], []
    for k, rels in sorted(by_class.items()):
        rels = sorted(rels)
        random.Random(f"{seed}/{os.path.dirname(rels[0])}").shuffle(rels)
        n_test = max(1, math.floor(fraction * len(rels) + 0.5)) if len(rels) >= 2 else 0
        test += [(r, k) for r in sorted(rels[:n_test])]
        train += [(r, k) for r in sorted(rels[n_test:])]
    return train, test


def holds_domains(data_dir, subdirs):
    """Whether data_dir's first subfolder holds folders and no images: a domain root, not a class folder."""
    first = os.path.join(data_dir, subdirs[0])
    return not _images(first) and bool(subfolders(first))


def _listing(data_dir):
    """{split: (root, classes, files)} of a folder dataset: its train/ and test/ folders, or its class folders
    cut by seeded_split."""
    if os.path.isdir(os.path.join(data_dir, "train")):
        listing = {}
        for split in ("train", "test"):
            root = os.path.join(data_dir, split)
            if not os.path.isdir(root):
                raise ValueError(f"folder dataset needs {root}/<class>/<image> (not found)")
            classes, files = _list_folder(root)
            if not files:
                raise ValueError(f"no images found under {root}/<class>/")
            listing[split] = (root, classes, files)
        return listing
    subdirs = subfolders(data_dir) if os.path.isdir(data_dir) else []
    if not subdirs:
        raise ValueError(f"folder dataset needs {data_dir}/train/<class>/<image> and test/, or "
                         f"{data_dir}/<class>/<image> (none found)")
    if holds_domains(data_dir, subdirs):
        raise ValueError(f"{data_dir} holds folders of folders (domains?): give a domain split such as "
                         f"{'+'.join(subdirs[:2])}, or --data-dir {os.path.join(data_dir, subdirs[0])}")
    classes, files = _list_folder(data_dir)
    train, test = seeded_split(files)
    return {"train": (data_dir, classes, train), "test": (data_dir, classes, test)}


# Pillow's convert("RGB") clips these modes' values at 255 (a 16-bit grayscale PNG turns white): decoded by to_8bit
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit(im):
    """uint8 [H,W] of a 16-bit grayscale image (mode I;16*, or I holding 16-bit values, as Pillow opens 16-bit
    PNGs and TIFFs): 0..65535 scaled to 0..255, rounded. Other wide images (32-bit, float) raise ValueError."""
    a = np.asarray(im)
    if im.mode == "F" or (im.mode == "I" and a.size and (a.min() < 0 or a.max() > 65535)):
        raise ValueError(f"{im.mode} images of {'floating-point' if im.mode == 'F' else '32-bit'} pixels are not "
                         "supported (convert it to 8 or 16 bits)")
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _decode(args):
    path, size = args
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB") if im.mode not in WIDE_MODES else Image.fromarray(to_8bit(im), "L").convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or unreadable: the user needs the file's name
        raise ValueError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None


def cache_paths(data_dir, image_size):
    """Where the decoded folder dataset is cached: next to the data, else (a read-only or shared data folder)
    in the user's cache folder, under a name made from the data folder's absolute path."""
    name = f".decoded-{image_size}px.pt"
    key = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:16]
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(data_dir, name), os.path.join(home, "same-accuracy", f"{key}-{image_size}px.pt")]


def _read_cache(path, fingerprint):
    """The cached tensors if `path` holds this fingerprint's; a corrupt file is reported and ignored."""
    if not os.path.exists(path):
        return None
    try:  # memory-mapped: ImageNet-200's cache (9.6 GB at 112x112) is read from disk as needed, not copied
        blob = torch.load(path, weights_only=True, mmap=True)
        if blob.get("fingerprint") != fingerprint:
            return None  # the folder changed since: decode again
        return (blob["train_x"], blob["train_y"]), (blob["test_x"], blob["test_y"]), blob["classes"]
    except Exception as e:  # noqa: BLE001 - truncated or garbage: rebuilding it is always right
        print(f"note: the decoded-data cache {path} is unreadable ({type(e).__name__}); rebuilding it",
              file=sys.stderr)
        return None


def _write_cache(paths, blob):
    """Atomically into the first place that takes it, a read-only folder or a full disk passed over (a killed
    first load never leaves a half-written cache)."""
    for i, path in enumerate(paths):
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            replace_atomic(path, lambda tmp: torch.save(blob, tmp))  # its temporary file goes however it fails
        except (OSError, RuntimeError):  # torch.save reports a read-only folder as RuntimeError
            continue
        if i > 0:
            print(f"note: {paths[0]} could not be written; cached the decoded images in {path}", file=sys.stderr)
        return
    print(f"note: no writable place for the decoded-image cache ({', '.join(paths)}); decoding on every load",
          file=sys.stderr)


def load_folder(data_dir, image_size):
    """((train_x uint8 [N,3,S,S], train_y int64 [N]), (test_x, test_y), class_names) of an image folder:
    data_dir/train/<class>/* and data_dir/test/<class>/*, or data_dir/<class>/* cut by seeded_split; every
    image resized whole to S x S = image_size; decoded once by up to 8 processes, then read from the cache."""
    listing, fingerprint = _listing(data_dir), hashlib.sha256(str(image_size).encode())
    for split in ("train", "test"):
        root, _, files = listing[split]
        for rel, _ in files:  # names, sizes and times: a changed folder invalidates the cache
            st = os.stat(os.path.join(root, rel))
            fingerprint.update(f"{split}/{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
    if listing["train"][1] != listing["test"][1]:
        raise ValueError(f"train and test class folders differ under {data_dir}")
    fingerprint = fingerprint.hexdigest()
    caches = cache_paths(data_dir, image_size)
    for cache in caches:
        found = _read_cache(cache, fingerprint)
        if found is not None:
            return found
    out = {"fingerprint": fingerprint, "classes": listing["train"][1]}
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for split in ("train", "test"):
            root, _, files = listing[split]
            jobs = [(os.path.join(root, rel), image_size) for rel, _ in files]
            # written image by image into one array: the decoded set is in memory once, not twice (a list of
            # images and their stack), and the cache is written from it (memory: docs/reproducing.md, "Other datasets")
            x = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
            for i, img in enumerate(pool.map(_decode, jobs, chunksize=256)):
                x[i] = img.transpose(2, 0, 1)  # HWC -> CHW
            out[f"{split}_x"] = torch.from_numpy(x)  # [N,3,S,S]
            out[f"{split}_y"] = torch.tensor([k for _, k in files], dtype=torch.int64)
    _write_cache(caches, out)
    return (out["train_x"], out["train_y"]), (out["test_x"], out["test_y"]), out["classes"]
