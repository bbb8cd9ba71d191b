"""Build ImageNet-100 / ImageNet-200 (Table 2a) as image folders that `--dataset folder` reads.

    python tools/make_subset.py --imagenet /data/ILSVRC2012 --classes 100 --out data/imagenet100
    python tools/make_subset.py --imagenet /data/ILSVRC2012 --classes 200 --out data/imagenet200
    python tools/make_subset.py --imagenet /data/ILSVRC2012 --classes imagenet100.txt --out data/in100-cmc

Reads IMAGENET/train/<wnid>/*.JPEG and IMAGENET/val/<wnid>/*.JPEG (the validation images sorted into class
folders, as torchvision.datasets.ImageNet(root, split="val") leaves them) and writes OUT/train/<wnid> and
OUT/test/<wnid> (ImageNet's validation set is the test set: its test labels are not public), as symlinks to
the class folders (--copy: copies), and OUT/classes.txt.

Which classes: the paper does not publish its lists. `--classes N` takes the first N of a seeded permutation
of the sorted WordNet ids of IMAGENET/train (random.Random(seed).shuffle, seed 0): reproducible from any
ImageNet copy, and ImageNet-100 is the first half of ImageNet-200. `--classes FILE` takes the ids listed in a
file (one per line), e.g. the ImageNet-100 of CMC (Tian et al. 2019, github.com/HobbitLong/CMC,
imagenet100.txt) used by much of the self-supervised literature. Bad input: one line on stderr, exit 2;
the output folder appears only when complete.
"""
import argparse
import os
import random
import shutil
import sys


def die(msg):
    print(f"make_subset.py: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def class_folders(root):
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) if os.path.isdir(root) else []


def choose_classes(wnids, classes, seed=0):
    """The subset's WordNet ids, in order: a count N (the first N of the seeded permutation of the sorted ids)
    or a file of ids (which must all be present)."""
    if classes.isdigit():
        n = int(classes)
        if not 1 <= n <= len(wnids):
            die(f"--classes {n}: ImageNet's train folder has {len(wnids)} classes")
        order = sorted(wnids)
        random.Random(seed).shuffle(order)
        return order[:n]
    try:
        with open(classes) as f:
            chosen = [line.strip() for line in f if line.strip()]
    except OSError as e:
        die(f"--classes {classes}: {e.strerror or e}")
    known = set(wnids)
    missing = [c for c in chosen if c not in known]
    if missing or not chosen or len(set(chosen)) != len(chosen):
        die(f"--classes {classes}: " + (f"{len(missing)} ids not in the train folder (e.g. {missing[0]})" if missing
                                        else "no ids" if not chosen else "an id is listed twice"))
    return chosen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.error = lambda message: die(message)  # one line, as train.py and reproduce.sh
    p.add_argument("--imagenet", required=True, help="ImageNet folder with train/<wnid>/ and val/<wnid>/")
    p.add_argument("--classes", required=True, help="a number (seeded choice) or a file of WordNet ids")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of --classes N")
    p.add_argument("--out", required=True, help="the subset's folder (must not exist)")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking the class folders")
    args = p.parse_args(argv)
    train, val = os.path.join(args.imagenet, "train"), os.path.join(args.imagenet, "val")
    wnids = class_folders(train)
    if not wnids:
        die(f"{train} holds no class folders")
    chosen = choose_classes(wnids, args.classes, args.seed)
    missing = [c for c in chosen if not os.path.isdir(os.path.join(val, c))]
    if missing:
        die(f"{val}/{missing[0]} not found: sort the validation images into class folders first "
            "(torchvision.datasets.ImageNet(root, split='val') does)")
    if os.path.exists(args.out):
        die(f"--out {args.out} exists")
    tmp = f"{args.out.rstrip(os.sep)}.tmp{os.getpid()}"
    try:
        for src, split in ((train, "train"), (val, "test")):
            os.makedirs(os.path.join(tmp, split))
            for c in chosen:
                source, dest = os.path.abspath(os.path.join(src, c)), os.path.join(tmp, split, c)
                shutil.copytree(source, dest) if args.copy else os.symlink(source, dest)
        with open(os.path.join(tmp, "classes.txt"), "w") as f:
            f.write("\n".join(chosen) + "\n")
        os.replace(tmp, args.out)  # the subset appears complete or not at all
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        die(f"cannot write {args.out}: {e.strerror or e}")
    print(f"{args.out}: {len(chosen)} classes (train/ and test/ {'copied' if args.copy else 'linked'}); "
          f"train with --dataset folder --data-dir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
