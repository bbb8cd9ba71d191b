"""The fast training path computes what a plain reference computes: the same loss and gradients as an fp32,
channels-first step (within bf16 tolerance), and augmentation distributed like torchvision's
RandomCrop(32, padding=4) + RandomHorizontalFlip."""
import contextlib
import copy

import torch
import torch.nn.functional as F

from data import Loader, apply_crops, random_crops
import pytest

from l2init import add_l2_init_grad_, l2_init_penalty, paired, snapshot
from resnet import resnet18
from sampler import LearningSpeed, batches
import step
from step import build_step, forward_backward, make_optimizer


def test_l2_init_as_a_gradient_gives_the_same_adam_update_as_the_penalty():
    # in float64: Adam divides by sqrt(v), so for a parameter whose gradient is ~1e-8 the two forms' fp32
    # rounding (~3e-8 apart, checked below) would already change its update by a sizeable fraction of lr
    torch.manual_seed(0)
    model = resnet18(5, width=8).double()
    anchor = {n: p + 0.1 * torch.randn_like(p) for n, p in snapshot(model).items()}
    x, y = torch.randn(16, 3, 32, 32, dtype=torch.float64), torch.randint(0, 5, (16,))
    updated = []
    for form in ("penalty", "gradient"):
        m = copy.deepcopy(model)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            if form == "penalty":  # Eq. 5 as written, through autograd
                (loss + l2_init_penalty(m, anchor, 0.05)).backward()
            else:
                loss.backward()
                add_l2_init_grad_(*paired(m, anchor), 0.05)
            opt.step()
        updated.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert (updated[0] - model_flat(model)).abs().max() > 1e-4  # the steps really moved the weights
    assert torch.allclose(updated[0], updated[1], atol=1e-6, rtol=0)
    grads = []  # fp32 gradients of the two forms agree to rounding
    for form in ("penalty", "gradient"):
        m = copy.deepcopy(model).float()
        loss = F.cross_entropy(m(x.float()), y)
        if form == "penalty":
            (loss + l2_init_penalty(m, anchor, 0.05)).backward()
        else:
            loss.backward()
            add_l2_init_grad_(*paired(m, anchor), 0.05)
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert (grads[0] - grads[1]).abs().max() < 1e-6 * grads[0].abs().max()


def model_flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def reference_steps(model, loader, anchor, lam, idx_batches, lrs):
    """The plain eager step written out: float lr, autograd penalty, loader.batch drawing its own crops.
    Returns the losses and how often each example was predicted right (Eq. 6's online count)."""
    opt = torch.optim.Adam(model.parameters(), lr=lrs[0])
    losses, correct = [], torch.zeros(len(loader.y))
    for idx, lr in zip(idx_batches, lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, _ = loader.batch(idx)
        opt.zero_grad()
        logits = model(x.double())
        correct.index_add_(0, idx, (logits.argmax(1) == y).float())
        loss = F.cross_entropy(logits.float(), y)
        (loss + l2_init_penalty(model, anchor, lam)).backward()
        opt.step()
        losses.append(loss.item())
    return losses, correct


def test_restructured_step_matches_the_plain_eager_step():
    # build_step: device learning rate written in place, gradient-form L2-init, fixed index and crop buffers.
    # The network in float64 (inputs cast on entry), so that Adam's normalisation does not blow up rounding
    torch.manual_seed(0)
    model = resnet18(10, width=8).double().to(memory_format=torch.channels_last)
    anchor = {n: p + 0.05 * torch.randn_like(p) for n, p in snapshot(model).items()}
    x = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (100,))
    it = batches(100, 16, torch.Generator().manual_seed(3))
    idx = [next(it) for _ in range(6)]
    lrs = [1e-3 * (0.7 ** k) for k in range(6)]
    ref_model, start = copy.deepcopy(model), model_flat(model)
    ref_losses, ref_correct = reference_steps(ref_model, Loader(x, y, "cpu", seed=5), anchor, 0.02, idx, lrs)

    loader = Loader(x, y, "cpu", seed=5)
    speed = LearningSpeed(100)
    opt = make_optimizer(model, lrs[0], torch.device("cpu"), cuda_graph=False)
    step, loss_sum = build_step(model, opt, loader, 16, paired(model, anchor), 0.02, None, speed,
                                forward=lambda x: model(x.double()))
    losses = []
    for i, lr in zip(idx, lrs):
        before = loss_sum.item()
        step(i, lr)
        losses.append(loss_sum.item() - before)
    assert losses == pytest.approx(ref_losses, rel=1e-6)
    assert (model_flat(model) - model_flat(ref_model)).abs().max() < 1e-8 < (model_flat(model) - start).abs().max()
    for (n, b), rb in zip(model.named_buffers(), ref_model.buffers()):  # BatchNorm running statistics too
        assert torch.allclose(b.float(), rb.float(), atol=1e-6), n
    assert speed.seen.sum() == 6 * 16  # the online learning speed saw every example of every batch
    assert ref_correct.sum() > 0 and torch.equal(speed.correct, ref_correct)  # ... and counted its right answers


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_runs(cuda_graph, steps=20):
    """Train steps of a width-16 net on the GPU, eagerly or graphed; returns (losses, params, buffers)."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = resnet18(10, width=16).to(dev, memory_format=torch.channels_last)
    anchor = {n: p.detach() + 0.05 for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    loader = Loader(x, y, dev, seed=1)
    speed = LearningSpeed(512, dev)
    opt = make_optimizer(model, 1e-3, dev, cuda_graph)
    step, loss_sum = build_step(model, opt, loader, 64, paired(model, anchor), 0.01, torch.bfloat16, speed,
                                cuda_graph=cuda_graph)
    it = batches(512, 64, torch.Generator(device=dev).manual_seed(0))
    losses = []
    for k in range(steps):
        step(next(it), 1e-3 * (1 - k / steps))
        losses.append(loss_sum.clone())
    return torch.stack(losses), model_flat(model), [b.clone() for b in model.buffers()], speed, step, it, model, loader


@needs_cuda
def test_gpu_graphed_step_equals_eager_step():
    le, pe, be, se, *_ = gpu_runs(False)
    lg, pg, bg, sg, *_ = gpu_runs(True)
    assert torch.allclose(le, lg, rtol=2e-2)
    assert (pe - pg).norm() < 2e-2 * pe.norm()
    for a, b in zip(be, bg):
        assert torch.allclose(a.float(), b.float(), rtol=5e-2, atol=5e-2)
    assert torch.equal(se.seen, sg.seen)


@contextlib.contextmanager
def strict_fp32():
    """Plain fp32 on the GPU: no TF32 in convolutions or matrix products."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def fp32_reference(steps=20):
    """gpu_runs' training written plainly: fp32 without autocast or TF32, channels-first, eager, torch's
    for-loop Adam with a Python-float learning rate, L2-init as its penalty's autograd gradient. The same
    init, anchor, data, batches and crops (the same seeds and device generators)."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = resnet18(10, width=16).to(dev)
    start = model_flat(model).clone()
    anchor = {n: p.detach() + 0.05 for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    loader = Loader(x, y, dev, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    it = batches(512, 64, torch.Generator(device=dev).manual_seed(0))
    losses = []
    with strict_fp32():
        for k in range(steps):
            imgs, labels, _ = loader.batch(next(it))
            for group in opt.param_groups:
                group["lr"] = 1e-3 * (1 - k / steps)
            opt.zero_grad()
            loss = F.cross_entropy(model(imgs.contiguous()), labels)
            (loss + 0.01 * sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())).backward()
            opt.step()
            losses.append(loss.detach())
    return torch.stack(losses), start, model_flat(model), model, loader


@needs_cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_gpu_training_evaluation_and_learning_speed_match_an_fp32_reference(cuda_graph):
    """train.py's GPU path (fused Adam reading the learning rate from a device tensor, bf16 autocast, channels-
    last, eager or graphed) against fp32_reference, within bf16's precision: each step's loss within 3%, the
    20 steps' weight update in the same direction (cosine > 0.8: Adam turns small gradients into full-size
    steps, so bf16's rounding shows more in the update than in the gradient) and of the same size (within
    15%). Then the bf16 evaluation and learning-speed pass (data.predict, step.record_learning_speed) against
    the same model in fp32: logits within 5% of their norm, and the same predicted class (and so the same
    learning-speed bit) for at least 90% of the images."""
    import data as D

    losses, params, _, speed, _, _, model, loader = gpu_runs(cuda_graph)
    ref_losses, start, ref_params, _, _ = fp32_reference()
    assert torch.allclose(torch.diff(losses, prepend=torch.zeros(1, device=losses.device)), ref_losses, rtol=3e-2)
    update, ref_update = params - start, ref_params - start
    assert F.cosine_similarity(update, ref_update, dim=0) > 0.8
    assert abs(update.norm() / ref_update.norm() - 1) < 0.15
    model.eval()
    with strict_fp32(), torch.no_grad():
        x = loader.normalize(loader.x)
        want = model(x).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(x).float()
    assert (got - want).norm() < 5e-2 * want.norm()
    pred = D.predict(model, loader.x, loader, autocast_dtype=torch.bfloat16)
    assert (pred == want.argmax(1)).float().mean() > 0.9
    step.record_learning_speed(model, loader, speed, torch.bfloat16)  # one exact epoch (Eq. 6)
    assert (speed.by_epoch[-1] == (want.argmax(1) == loader.y)).float().mean() > 0.9


@needs_cuda
def test_gpu_graphed_step_has_no_host_sync_and_one_graph_launch():
    *_, step, it, _, _ = gpu_runs(True, steps=5)  # warmed up and captured
    idx = [next(it) for _ in range(3)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in idx[:2]:
            step(i, 1e-4)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(idx[2], 1e-4)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    if not any(n.startswith("cuda") for n in names):
        pytest.skip("the profiler recorded no CUDA runtime calls (CUPTI unavailable)")
    assert sum(n.startswith("cudaGraphLaunch") for n in names) == 1  # kineto may add a version suffix


def test_fast_step_matches_fp32_reference():
    torch.manual_seed(0)
    model = resnet18(10, width=8)
    anchor = {n: p + 0.05 * torch.randn_like(p) for n, p in snapshot(model).items()}  # theta != theta_0
    y = torch.randint(0, 10, (64,))
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    imgs, labels, _ = Loader(x, y, "cpu", seed=0).batch(torch.arange(64))
    lam = 0.01

    ref = copy.deepcopy(model)  # fp32, channels-first, loss and penalty written out by hand
    ref_loss = F.cross_entropy(ref(imgs.contiguous()), labels)
    penalty = lam * sum(((p - anchor[n]) ** 2).sum() for n, p in ref.named_parameters())
    (ref_loss + penalty).backward()

    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters()])
    for amp, cos_min, rel_err in ((None, 0.9999, 0.02), (torch.bfloat16, 0.9, 0.3)):
        # fp32 in channels_last must match up to the conv algorithms' rounding; bf16 within its ~3 significant
        # digits, which over ~20 layers of a random-init width-8 net leaves a gradient cosine of ~0.95 against fp32
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
        loss, logits = forward_backward(fast, imgs, labels, paired(fast, anchor), lam, amp=amp)
        assert logits.dtype == (amp or torch.float32)  # the forward really ran in that precision
        assert abs(loss.item() - ref_loss.item()) < (0.01 if amp else 1e-5) * ref_loss.item()
        assert torch.allclose(l2_init_penalty(fast, anchor, lam), penalty.detach(), rtol=1e-5)
        g_fast = torch.cat([p.grad.flatten() for p in fast.parameters()])
        assert F.cosine_similarity(g_fast, g_ref, dim=0) > cos_min
        assert (g_fast - g_ref).norm() < rel_err * g_ref.norm()
        assert abs(g_fast.norm() / g_ref.norm() - 1) < (0.05 if amp else 1e-3)


def positions_and_flips(out):
    """From crops of the coded image below: the (dy, dx) offset into the padded image and the flip."""
    r, g = out[:, 0, 16, 16].long() // 8, out[:, 1, 16, 16].long() // 8  # source row/col of output (16, 16)
    flipped = out[:, 1, 16, 17].long() < out[:, 1, 16, 16].long()  # columns run backwards
    dy = r - 12
    dx = torch.where(flipped, g - 11, g - 12)  # flipped: output col c reads padded col dx + 31 - c
    return dy, dx, flipped


def chi2_uniform(values, k):
    counts = torch.bincount(values, minlength=k).float()
    expected = len(values) / k
    return float(((counts - expected) ** 2 / expected).sum())


def augmented(n):
    """n crops-and-flips of a [3,32,32] image whose pixels code their own position, by the device loader."""
    ii, jj = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    img = torch.stack([ii * 8, jj * 8, torch.full_like(ii, 255)]).to(torch.uint8)  # [3,32,32] position code
    return img, apply_crops(img.expand(n, -1, -1, -1).contiguous(), *random_crops(n, torch.Generator().manual_seed(0)))


def test_augmentation_is_a_uniform_padded_crop_and_a_fair_flip():
    _, out = augmented(4000)
    dy, dx, flip = positions_and_flips(out)
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8  # 9 offsets per axis
    # uniform offsets (chi-square, 8 dof: 26.1 is the 0.1% critical value) and fair flips
    assert chi2_uniform(dy, 9) < 26.1 and chi2_uniform(dx, 9) < 26.1
    assert abs(flip.float().mean() - 0.5) < 0.03
    # padding: where the window leaves the image, pixels are zero in every channel
    src_r = dy[:50, None] + torch.arange(32) - 4
    outside = (src_r < 0) | (src_r > 31)  # rows outside the image
    assert (out[:50].permute(0, 2, 1, 3)[outside] == 0).all()


def test_augmentation_matches_torchvision_statistically():
    T = pytest.importorskip("torchvision.transforms")  # an optional reference: not a requirement

    n = 4000
    img, ours = augmented(n)
    torch.manual_seed(0)
    tv = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    theirs = torch.stack([tv(img) for _ in range(n)])
    # two-sample: the same offset histograms within noise
    h = [torch.bincount(positions_and_flips(o)[0] * 9 + positions_and_flips(o)[1], minlength=81).float()
         for o in (ours, theirs)]
    assert float(((h[0] - h[1]) ** 2 / (h[0] + h[1]).clamp(min=1)).sum()) < 124.8  # chi-square 80 dof, 0.1%


def hand_count_flops(width, classes):
    """Forward: 2*k*k*Cin*Cout*H*W per conv (stride-aware), 2*512*classes for the head; backward: twice the
    forward (input and weight gradients), less the stem's input gradient (images need none)."""
    convs, c_in, h = [(3, width, 3, 32)], width, 32
    for i, c in enumerate([width, 2 * width, 4 * width, 8 * width]):
        for j in range(2):
            stride = 2 if (j == 0 and i > 0) else 1
            h //= stride
            convs += [(c_in, c, 3, h), (c, c, 3, h)] + ([(c_in, c, 1, h)] if stride != 1 or c_in != c else [])
            c_in = c
    fwd = sum(2 * k * k * a * b * s * s for a, b, k, s in convs) + 2 * 8 * width * classes
    return 3 * fwd - 2 * 9 * 3 * width * 32 * 32


def test_bench_flop_count_matches_a_hand_count():
    from repro.bench import flops_per_image

    assert flops_per_image(8, 10) == hand_count_flops(8, 10)
    assert flops_per_image(64, 100) == hand_count_flops(64, 100) == 3_329_273_856  # ~3.33 GFLOP per image and step


def test_bench_projects_train_pys_evaluations_and_each_plans_run_lengths():
    from repro.bench import plan_runs, plan_seconds

    # by hand, 2 ms a step, 100 ms an evaluation: 400 steps = 0.8 s and evaluations at 0, 200, 400 = 0.3 s;
    # 1000 steps = 2 s, evaluations at 0, 200, ..., 1000 = 0.6 s, learning-speed passes 1000 * 128 / 10,000
    # evaluations = 1.28 s; 300 steps = 0.6 s, evaluations at 0, 200, 300 = 0.3 s
    assert plan_seconds([(400, False, 200), (1000, True, 200), (300, False, 200)], 2, 100) == \
        pytest.approx(0.8 + 0.3 + 2 + 0.6 + 1.28 + 0.6 + 0.3)
    # each run at its own plan's interval: 300 steps every 78 = evaluations at 0, 78, 156, 234, 300 = 0.5 s
    assert plan_seconds([(300, False, 78)], 2, 100) == pytest.approx(0.6 + 0.5)
    runs = plan_runs()["table1"]
    # per seed: the old model (full length, records the learning speed for easy/hard), Table 1's x0.25 rows
    # (Naive and all four methods, each continuous and scratch: 4 runs at 39,100 / 4 = 9,775), the figures' x0.5
    # and x0.75 rows, and the other 16 rows at full length, none recording
    assert sorted(runs) == sorted(5 * ([(39100.0, True, 200)] + [(9775.0, False, 200)] * 4
                                       + [(19550.0, False, 200)] * 2 + [(29325.0, False, 200)]
                                       + [(39100.0, False, 200)] * 16))
    # the laptop plan at its own length: per seed the old model (recording), Scratch, Continuous, Ours (x1) and
    # Ours (x0.5); and the plateau check, twice as long
    assert sorted(plan_runs(["laptop"])["laptop"]) == sorted(3 * ([(3910.0, True, 78)] + [(3910.0, False, 78)] * 3
                                                                  + [(1955.0, False, 78)]) + [(7820.0, False, 78)])


@pytest.mark.parametrize("device, msg", [("foo", "unknown device 'foo'"), ("cuda:99", "--device cuda:99")])
def test_bench_refuses_a_bad_device_in_one_line(device, msg, capsys):
    from repro.bench import main

    with pytest.raises(SystemExit) as e:
        main(["--device", device])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1


def test_bench_without_torchvision_refuses_the_typical_pipeline_in_one_line(monkeypatch, capsys):
    from repro import bench

    real = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None if name == "torchvision" else real(name))
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "--no-typical" in err and len(err.splitlines()) == 1

    class Passed(Exception):  # what the benchmark does first after its checks: reached, so not refused
        pass

    def passed(*a):
        raise Passed

    monkeypatch.setattr(bench, "matmul_tflops", passed)
    monkeypatch.setattr(bench, "worker", passed)
    for flag in ("--no-typical", "--worker"):  # neither needs torchvision
        with pytest.raises(Passed):
            bench.main(["--device", "cpu", flag])


def test_bench_workers_run_the_same_command_line_and_their_rates_add_up(monkeypatch):
    from repro import bench

    cmds, out = [], iter(['{"it_per_s": 3.0, "late": true}', 'warming up\n{"it_per_s": 4.5, "late": false}'])

    class FakeWorker:  # a worker process: prints its JSON line last
        def __init__(self, cmd, **kw):
            cmds.append(cmd)

        def communicate(self):
            return next(out) + "\n", None

    monkeypatch.setattr(bench.subprocess, "Popen", FakeWorker)
    argv = ["--device", "cuda:1", "--width", "16", "--compile", "--steps", "7"]
    args = bench.argparse.Namespace(compile=True)
    assert bench.time_concurrent(args, argv, 2, cuda_graph=True) == (7.5, 1)
    assert len(cmds) == 2 and cmds[0] == cmds[1]
    assert cmds[0][1:3] == ["-m", "repro.bench"]
    assert cmds[0][3:3 + len(argv)] == argv and cmds[0][3 + len(argv)] == "--worker"  # every flag, device index too
    assert cmds[0][-1] == "--graph"
