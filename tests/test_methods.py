"""Each method module against an independent hand computation."""
import ast
import copy
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from conftest import ROOT
from l2init import l2_init_penalty, snapshot
from resnet import grow_head, resnet18
from sampler import (LearningSpeed, _pseudo_epochs, balanced_batches, batches, easy_hard_weights, old_new_weights,
                     pack_bits, unpack_bits)
from schedule import lr_at
from shrink_perturb import fresh_copy, shrink_perturb_


# ---------------------------------------------------------------- resnet

def test_resnet18_parameter_count():
    # kuangliu's CIFAR ResNet-18 has 11,173,962 parameters with 10 classes; 90 more classes add 90*(512+1)
    n = sum(p.numel() for p in resnet18(100).parameters())
    assert n == 11_173_962 + 90 * 513 == 11_220_132


def test_resnet_width_channels_last_and_bf16():
    torch.manual_seed(0)
    m = resnet18(7, width=8).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert m.fc.in_features == 64  # 8 * width
    ref = m.eval()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x)
    assert low.shape == (4, 7) and low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), ref, atol=0.1 * ref.abs().max().item())


def test_grow_head_copies_old_rows():
    torch.manual_seed(0)
    m = resnet18(3, width=8)
    w, b = m.fc.weight.clone(), m.fc.bias.clone()
    grow_head(m, 5)
    assert m.fc.weight.shape == (5, 64)
    assert torch.equal(m.fc.weight[:3], w) and torch.equal(m.fc.bias[:3], b)
    bound = 1 / math.sqrt(64)  # nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert m.fc.weight[3:].abs().max() <= bound and m.fc.weight[3:].abs().max() > bound / 4


# ---------------------------------------------------------------- shrink-perturb (Eq. 4)

def test_shrink_perturb_exact_blend_with_noise_model():
    torch.manual_seed(0)
    m, noise = resnet18(5, width=8), resnet18(5, width=8)
    m.train()(torch.randn(8, 3, 32, 32) * 3 + 1)  # "old" running statistics, far from a fresh network's
    before = {k: v.clone() for k, v in m.state_dict().items()}
    keep = shrink_perturb_(copy.deepcopy(m), alpha=0.3, beta=0.02, noise_model=noise, keep_bn_stats=True)
    shrink_perturb_(m, alpha=0.3, beta=0.02, noise_model=noise)
    nz = dict(noise.named_parameters())
    for name, p in m.named_parameters():
        assert torch.allclose(p, 0.3 * before[name] + 0.02 * nz[name], atol=1e-7), name
    # BatchNorm running statistics: by default a fresh network's (mean 0, variance 1, no batches), as Ash &
    # Adams' code returns the fresh network; keep_bn_stats leaves the old ones
    for name, buf in m.named_buffers():
        fresh = 1 if name.endswith("running_var") else 0
        assert torch.equal(buf, torch.full_like(buf, fresh)), name
        assert not torch.equal(before[name], buf) and torch.equal(dict(keep.named_buffers())[name], before[name])


def test_shrink_perturb_default_noise_has_each_layers_init_scale():
    torch.manual_seed(0)
    m = resnet18(5, width=8)
    with torch.no_grad():  # make the "old" weights distinctive, so the noise can be recovered exactly
        for p in m.parameters():
            p.fill_(3.0)
    alpha, beta = 0.4, 0.5
    shrink_perturb_(m, alpha, beta)
    noise = {n: (p - alpha * 3.0) / beta for n, p in m.named_parameters()}
    assert torch.allclose(noise["bn1.weight"], torch.ones_like(noise["bn1.weight"]), atol=1e-5)  # BN init: 1
    assert torch.allclose(noise["bn1.bias"], torch.zeros_like(noise["bn1.bias"]), atol=1e-5)  # BN init: 0
    for name in ("conv1.weight", "layer3.0.conv2.weight", "fc.weight"):
        w = noise[name]
        fan_in = w[0].numel()
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) of conv and linear
        assert w.abs().max() <= bound * 1.001, name
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3), name


def test_shrink_perturb_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        shrink_perturb_(nn.Linear(2, 2), alpha=1.5)


def test_fresh_copy_differs_and_leaves_original():
    torch.manual_seed(0)
    m = nn.Linear(4, 3)
    w = m.weight.clone()
    c = fresh_copy(m)
    assert torch.equal(m.weight, w) and not torch.equal(c.weight, w)


# ---------------------------------------------------------------- L2-init (Eq. 5)

def test_l2_init_penalty_value_and_gradient():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    anchor = snapshot(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    lam = 0.05
    pen = l2_init_penalty(m, anchor, lam)
    expected = lam * sum(((p - anchor[n]) ** 2).sum() for n, p in m.named_parameters())
    assert torch.allclose(pen, expected)
    pen.backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, 2 * lam * (p - anchor[n]).detach())


def test_l2_init_zero_anchor_is_plain_l2_and_missing_entries_are_skipped():
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    zeros = {"weight": torch.zeros_like(m.weight)}  # no entry for the bias: skipped
    assert torch.allclose(l2_init_penalty(m, zeros, 0.01), 0.01 * (m.weight ** 2).sum())
    # at theta = theta_0 the penalty and its gradient are exactly zero (no NaN from the norm's derivative)
    pen = l2_init_penalty(m, snapshot(m), 0.01)
    pen.backward()
    assert pen.item() == 0 and m.weight.grad.abs().max() == 0


def test_paired_moves_the_anchor_to_each_parameters_device_and_dtype():
    """train.py and repro/bench.py hand paired() the anchor as starting_point made it (CPU, float32) after the model
    moved to the device: paired alone puts it there (the meta device stands in for a GPU on a CPU machine)."""
    from l2init import paired

    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    anchor = {n: t.double() for n, t in snapshot(m).items()}
    anchor.pop("1.bias")  # no entry: not paired
    m = m.to("meta")
    params, anchors = paired(m, anchor)
    assert [p.shape for p in params] == [(4, 3), (4,), (2, 4)] and all(p.device.type == "meta" for p in params)
    assert [(a.shape, a.device.type, a.dtype) for a in anchors] == [(p.shape, "meta", torch.float32) for p in params]


# ---------------------------------------------------------------- learning speed (Eq. 6) and samplers

def test_learning_speed_scripted_updates():
    ls = LearningSpeed(4)
    # epoch 1: 0 right, 1 wrong, 2 right; epoch 2: 0 right, 1 right, 2 wrong, 3 right; example 0 twice in one batch
    ls.update(torch.tensor([0, 1, 2]), torch.tensor([True, False, True]))
    ls.update(torch.tensor([0, 1, 2, 3, 0]), torch.tensor([True, True, False, True, False]))
    assert torch.allclose(ls.value(), torch.tensor([2 / 3, 1 / 2, 1 / 2, 1.0]))
    other = LearningSpeed(4)
    other.load_state_dict(ls.state_dict())
    assert torch.equal(other.value(), ls.value())
    assert torch.isnan(LearningSpeed(2).value()).all()  # never observed: no learning speed (not 'hardest')


def test_learning_speed_exact_form_and_bit_packing():
    ls = LearningSpeed(11)
    rows = torch.rand(3, 11, generator=torch.Generator().manual_seed(0)) < 0.5  # 3 epochs, 11 examples
    for row in rows:
        ls.record_epoch(row)
    assert torch.equal(ls.value(), rows.float().mean(0))  # Eq. 6: the fraction of epochs classified correctly
    state = ls.state_dict()
    packed = state["correct_by_epoch"]
    assert packed.dtype == torch.uint8 and packed.shape == (3, 2)  # 11 bits -> 2 bytes per epoch
    # byte 0 of epoch 0 holds examples 0..7, least significant bit first (written out by hand)
    assert int(packed[0, 0]) == sum(int(rows[0, j]) << j for j in range(8))
    assert torch.equal(unpack_bits(packed, 11), rows) and torch.equal(pack_bits(unpack_bits(packed, 11)), packed)
    other = LearningSpeed(11)
    other.load_state_dict(state)
    assert torch.equal(torch.stack(other.by_epoch), rows) and torch.equal(other.value(), ls.value())


def test_easy_hard_weights_hand_example_with_ties():
    # 10 old examples (c=0.4 -> 2 easiest, 2 hardest) and 2 new ones with extreme values that must be ignored
    ls = torch.tensor([0.5, 0.1, 0.9, 0.1, 0.5, 0.9, 0.7, 0.1, 0.3, 0.9, 0.0, 1.0])
    is_old = torch.tensor([True] * 10 + [False] * 2)
    w = easy_hard_weights(ls, is_old, c=0.4, r=0.25)
    # hardest: 0.1 at indices 1, 3, 7 -> the two lowest indices (1, 3); easiest: 0.9 at 2, 5, 9 -> (5, 9)
    expected = torch.ones(12)
    expected[[1, 3, 5, 9]] = 0.25
    assert torch.equal(w, expected)
    assert torch.equal(easy_hard_weights(ls, is_old, c=0.0), torch.ones(12))


def test_easy_hard_leaves_unseen_examples_out_of_the_ranking():
    # 6 old examples, 2 of them never observed (NaN): c=0.5 of the 4 ranked ones -> 1 easiest, 1 hardest
    ls = torch.tensor([0.2, float("nan"), 0.9, 0.5, float("nan"), 0.6, 0.0])
    is_old = torch.tensor([True] * 6 + [False])
    w = easy_hard_weights(ls, is_old, c=0.5, r=0.1)
    expected = torch.ones(7)
    expected[[0, 2]] = 0.1  # hardest 0.2 (not an unseen one), easiest 0.9
    assert torch.allclose(w, expected)


def test_old_new_weights_equal_mass():
    is_old = torch.tensor([True] * 7 + [False] * 3)
    w = old_new_weights(is_old)
    assert torch.isclose(w[is_old].sum(), w[~is_old].sum()) and torch.isclose(w.mean(), torch.tensor(1.0))


def test_uniform_batches_are_epoch_permutations():
    g = torch.Generator().manual_seed(0)
    it = batches(10, 4, g)
    stream = torch.cat([next(it) for _ in range(5)])  # 20 indices = two epochs, batches straddle them
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))


def test_balanced_batches_are_exactly_half_old():
    is_old = torch.tensor([True] * 7 + [False] * 3)
    it = balanced_batches(is_old, 6, torch.Generator().manual_seed(0))
    bs = [next(it) for _ in range(14)]  # 42 old draws = 6 epochs of the 7 old; 42 new = 14 epochs of the 3 new
    for b in bs:
        assert is_old[b].sum() == 3 and b.shape == (6,)
    olds = torch.cat([b[:3] for b in bs])
    for e in range(6):  # without replacement: each old example once per old epoch
        assert sorted(olds[7 * e: 7 * e + 7].tolist()) == list(range(7))


def test_weighted_pseudo_epochs_without_replacement():
    w = torch.tensor([1.0, 0.1, 1.0, 0.0, 0.5])
    chunks = _pseudo_epochs(w / w.max(), torch.Generator().manual_seed(0))
    epochs = [next(chunks) for _ in range(4000)]
    counts = torch.zeros(5)
    for e in epochs:
        assert len(set(e.tolist())) == len(e)  # at most once per pseudo-epoch
        counts += torch.bincount(e, minlength=5)
    # weight-1 examples in every pseudo-epoch, the others with probability weight / max weight
    assert counts[0] == counts[2] == 4000 and counts[3] == 0
    assert abs(counts[1] / 4000 - 0.1) < 0.015 and abs(counts[4] / 4000 - 0.5) < 0.03
    it = batches(5, 2, torch.Generator().manual_seed(0), weights=w)
    assert all(next(it).shape == (2,) for _ in range(50))
    # equal weights: every pseudo-epoch keeps every example, i.e. plain epochs as uniform sampling has them
    eq = batches(5, 5, torch.Generator().manual_seed(1), weights=torch.full((5,), 0.3))
    assert all(sorted(next(eq).tolist()) == list(range(5)) for _ in range(10))


def test_weighted_batches_with_replacement_follow_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([1.0, 0.1, 1.0, 0.0, 2.0])
    it = batches(5, 1000, g, weights=w, replacement=True)
    counts = torch.bincount(torch.cat([next(it) for _ in range(40)]), minlength=5).float()
    freq, expected = counts / counts.sum(), w / w.sum()
    assert counts[3] == 0
    assert torch.allclose(freq, expected, atol=0.01)


# ---------------------------------------------------------------- schedule

def test_cosine_schedule_values():
    assert lr_at(0, 1000) == pytest.approx(1e-3)
    assert lr_at(500, 1000) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)  # middle: halfway
    assert lr_at(250, 1000, scale=0.5) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    t = 0.25 * 1000
    assert lr_at(100, 1000, scale=0.25) == pytest.approx(1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * 100 / t)) / 2)
    assert lr_at(249, 1000, scale=0.25) > 1e-6 and lr_at(249, 1000, scale=0.25) < 1.1e-6
    assert lr_at(250, 1000, scale=0.25) == 1e-6 and lr_at(999, 1000, scale=0.25) == 1e-6  # held after T


def test_multistep_schedule_values():
    assert lr_at(0, 100, kind="multistep") == pytest.approx(1e-3)
    assert lr_at(49, 100, kind="multistep") == pytest.approx(1e-3)
    assert lr_at(50, 100, kind="multistep") == pytest.approx(1e-4)
    assert lr_at(75, 100, kind="multistep") == pytest.approx(1e-5)
    assert lr_at(30, 100, scale=0.5, kind="multistep") == pytest.approx(1e-4)


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError):
        lr_at(0, 100, scale=0)
    with pytest.raises(ValueError):
        lr_at(0, 100, kind="linear")


# ---------------------------------------------------------------- copy-alone imports

@pytest.mark.parametrize("module", ["shrink_perturb", "l2init", "sampler", "schedule", "speedup", "runlog",
                                    "analysis"])
def test_module_imports_alone(tmp_path, module):
    shutil.copy(os.path.join(ROOT, f"{module}.py"), tmp_path)
    use = {"speedup": "; assert speedup.speedup([0, 1, 2], [0, 50, 100], [0, 1], [0, 100]) == 2.0"}  # Eq. 2 by hand
    r = subprocess.run([sys.executable, "-c", f"import {module}" + use.get(module, "")], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    # nor anywhere inside it (an import in a function would only fail when that function runs)
    project = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")} | {"repro", "tools", "tests"}
    tree = ast.parse(open(os.path.join(ROOT, f"{module}.py")).read())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names] + \
        [n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in project or n.startswith(".")], names
