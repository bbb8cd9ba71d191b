"""cifar.py: the release's files read, checked against their md5s, downloaded and unpacked; the resize."""
import hashlib
import os
import tarfile

import numpy as np
import pytest
import torch

import cifar
from conftest import write_cifar


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def synthetic_release(tmp_path, monkeypatch, name):
    """Synthetic CIFAR files (write_cifar) packed as the authors' archive, served from a file:// URL and put in
    cifar.RELEASES with their own md5s. Returns (write_cifar's return, the folder, the archive, the Release)."""
    written = write_cifar(tmp_path / "src", name, n_train=2, n_test=1)
    r = cifar.RELEASES[name]
    folder, archive = tmp_path / "src" / r.folder, tmp_path / r.url.rsplit("/", 1)[1]
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=r.folder)
    release = r._replace(url=archive.as_uri(), md5=md5(archive), meta_md5=md5(folder / r.meta),
                         train=tuple((f, md5(folder / f)) for f, _ in r.train),
                         test=tuple((f, md5(folder / f)) for f, _ in r.test))
    monkeypatch.setitem(cifar.RELEASES, name, release)
    return written, folder, archive, release


def test_missing_files_raise(tmp_path):
    with pytest.raises(ValueError, match="cifar10 not found"):
        cifar.load("cifar10", str(tmp_path), download=False)


def test_files_are_checked_against_the_releases_md5(tmp_path):
    write_cifar(tmp_path, "cifar10", n_train=1, n_test=1)  # the release's layout, not its bytes
    with pytest.raises(ValueError, match="not its authors' files"):
        cifar.load("cifar10", str(tmp_path), download=False)


@pytest.mark.parametrize("damaged", ["batches.meta", "data_batch_3", "test_batch"])
def test_every_file_is_checked_against_its_md5(tmp_path, monkeypatch, damaged):
    _, folder, _, _ = synthetic_release(tmp_path, monkeypatch, "cifar10")
    assert cifar.load("cifar10", str(tmp_path / "src"), download=False)[2][0] == "class000"  # all intact
    with open(folder / damaged, "ab") as f:
        f.write(b"x")  # pickle.load would not notice: it stops before the extra byte
    with pytest.raises(ValueError, match="not its authors' files"):
        cifar.load("cifar10", str(tmp_path / "src"), download=False)


def test_download_is_checked_unpacked_and_kept(tmp_path, monkeypatch):
    ((xtr, ytr), _, names), folder, archive, release = synthetic_release(tmp_path, monkeypatch, "cifar100")
    dest = tmp_path / "data"
    (tx, ty), _, classes = cifar.load("cifar100", str(dest))
    assert torch.equal(tx, torch.from_numpy(xtr).permute(0, 3, 1, 2)) and ty.tolist() == ytr.tolist()
    assert classes == names and md5(dest / archive.name) == md5(archive)  # the archive is kept

    # a download that is not the release: refused, nothing left behind (runlog.replace_atomic), nothing unpacked
    monkeypatch.setitem(cifar.RELEASES, "cifar100", release._replace(md5="0" * 32))
    with pytest.raises(ValueError, match="does not match its md5"):
        cifar.load("cifar100", str(tmp_path / "other"))
    assert os.listdir(tmp_path / "other") == []

    # the archive holds a file unlike the release's: refused after unpacking
    monkeypatch.setitem(cifar.RELEASES, "cifar100", release._replace(meta_md5="0" * 32))
    with pytest.raises(ValueError, match="do not match their md5"):
        cifar.load("cifar100", str(tmp_path / "third"))

    monkeypatch.setitem(cifar.RELEASES, "cifar100", release)
    archive.unlink()  # nothing to download any more: a damaged file is unpacked again from the kept archive
    train = dest / folder.name / "train"
    train.write_bytes(train.read_bytes()[:100])
    assert torch.equal(cifar.load("cifar100", str(dest))[0][0], tx) and md5(train) == md5(folder / "train")


def test_a_cut_download_is_one_oserror_and_leaves_nothing(tmp_path, monkeypatch):
    import http.client

    def cut(url, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise http.client.IncompleteRead(b"partial", 100)

    monkeypatch.setattr(cifar.urllib.request, "urlretrieve", cut)
    with pytest.raises(OSError, match="IncompleteRead"):  # train.py turns an OSError into one line
        cifar.load("cifar10", str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_archives_are_those_the_authors_publish():
    # https://www.cs.toronto.edu/~kriz/cifar.html lists each python version's address and md5sum; the files inside
    # are checked against torchvision's table where torchvision is installed (the next test)
    assert cifar.RELEASES["cifar10"][:2] == ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                             "c58f30108f718f92721af3b95e74349a")
    assert cifar.RELEASES["cifar100"][:2] == ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                              "eb9058c3a382ffc7106e4002c42a8d85")


def test_release_matches_torchvisions_constants():
    tv = pytest.importorskip("torchvision.datasets.cifar")  # an optional reference: not a requirement

    for name, cls in (("cifar10", tv.CIFAR10), ("cifar100", tv.CIFAR100)):
        r = cifar.RELEASES[name]
        assert (r.url, r.md5, r.folder) == (cls.url, cls.tgz_md5, cls.base_folder)
        assert (r.meta, r.names_key, r.meta_md5) == (cls.meta["filename"], cls.meta["key"], cls.meta["md5"])
        assert [list(p) for p in r.train] == cls.train_list and [list(p) for p in r.test] == cls.test_list


def hand_resize_matrix(n_in, n_out):
    """[n_out, n_in]: bilinear with antialiasing as PIL defines it, a triangle of half-width n_in / n_out input
    pixels around each output pixel's centre, its weights renormalised where it leaves the image."""
    s = n_in / n_out
    w = np.array([[max(0.0, 1 - abs(j + 0.5 - (i + 0.5) * s) / s) for j in range(n_in)] for i in range(n_out)])
    return w / w.sum(1, keepdims=True)


@pytest.mark.parametrize("size", [16, 24])
def test_cifar_resize_is_an_antialiased_bilinear_filter(tmp_path, no_checksum, size):
    (xtr, _), (xte, _), _ = write_cifar(tmp_path, "cifar10", n_train=3, n_test=1)
    (x, _), (tx, _), _ = cifar.load("cifar10", str(tmp_path), size, download=False)
    assert x.dtype == tx.dtype == torch.uint8
    w = hand_resize_matrix(32, size)  # at 16: 1/8, 3/8, 3/8, 1/8 inside; 3/7, 3/7, 1/7 at the edges
    for ours, images in ((x, xtr), (tx, xte)):
        exact = np.einsum("ih,nhwc,kw->ncik", w, images.astype(np.float64), w)  # [N,3,size,size], unrounded
        assert ours.shape == exact.shape and np.abs(ours.numpy() - exact).max() <= 0.5 + 1e-3  # rounded
    x32 = cifar.load("cifar10", str(tmp_path), 32, download=False)[0][0]
    assert torch.equal(x32, torch.from_numpy(xtr).permute(0, 3, 1, 2))  # 32 px: untouched


def test_cifar_resize_matches_torchvision(tmp_path, no_checksum):
    TF = pytest.importorskip("torchvision.transforms.v2.functional")  # an optional reference: not a requirement

    (xtr, _), _, _ = write_cifar(tmp_path, "cifar10", n_train=3, n_test=1)
    x = cifar.load("cifar10", str(tmp_path), 16, download=False)[0][0]
    ims = [torch.from_numpy(im).permute(2, 0, 1) for im in xtr]  # [3,32,32] each, one at a time as a Resize sees them
    exact = torch.stack([TF.resize(im.float(), [16, 16], antialias=True).round() for im in ims])
    assert torch.equal(x, exact.to(torch.uint8))  # torchvision's float path, rounded
    fixed = torch.stack([TF.resize(im, [16, 16], antialias=True) for im in ims])  # its uint8 path: fixed point
    assert (x.int() - fixed.int()).abs().max() <= 1
