"""The fast training path computes what a plain reference computes: the same loss and gradients as an fp32,
channels-first step (within bf16 tolerance), and augmentation distributed like torchvision's
RandomCrop(32, padding=4) + RandomHorizontalFlip."""
import copy

import torch
import torch.nn.functional as F

from data import Loader, crop_flip
from l2init import snapshot
from resnet import resnet18
from train import forward_backward


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
        loss, reg, logits = forward_backward(fast, imgs, labels, anchor, lam, amp=amp)
        assert logits.dtype == (amp or torch.float32)  # the forward really ran in that precision
        assert abs(loss.item() - ref_loss.item()) < (0.01 if amp else 1e-5) * ref_loss.item()
        assert torch.allclose(reg, penalty.detach(), rtol=1e-5)
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


def test_augmentation_matches_torchvision_statistically():
    import torchvision.transforms as T

    ii, jj = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    img = torch.stack([ii * 8, jj * 8, torch.full_like(ii, 255)]).to(torch.uint8)  # [3,32,32] position code
    n = 4000
    ours = crop_flip(img.expand(n, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    tv = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    theirs = torch.stack([tv(img) for _ in range(n)])
    for out in (ours, theirs):
        dy, dx, flip = positions_and_flips(out)
        assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8  # 9 offsets per axis
        # uniform offsets (chi-square, 8 dof: 26.1 is the 0.1% critical value) and fair flips
        assert chi2_uniform(dy, 9) < 26.1 and chi2_uniform(dx, 9) < 26.1
        assert abs(flip.float().mean() - 0.5) < 0.03
        # padding: where the window leaves the image, pixels are zero in every channel
        window = torch.stack([out[i] for i in range(50)])
        src_r = dy[:50, None] + torch.arange(32) - 4
        outside = (src_r < 0) | (src_r > 31)  # rows outside the image
        assert (window.permute(0, 2, 1, 3)[outside] == 0).all()
    # and the two agree with each other (two-sample: same offset histograms within noise)
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
    from bench import flops_per_image

    assert flops_per_image(8, 10) == hand_count_flops(8, 10)
    assert flops_per_image(64, 100) == hand_count_flops(64, 100) == 3_329_273_856  # the issue's ~3.33 GFLOP
