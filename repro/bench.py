"""Benchmark: training-step and evaluation speed of this project's pipeline against the pipeline a typical
reproduction would use, and the aggregate throughput of K concurrent runs on one GPU.

    python -m repro.bench                      # on the GPU: every step configuration, typical, K = 1, 2, 4, 8
    python -m repro.bench --device cpu --width 8 --steps 5 --repeats 2 --concurrency 1   # a smoke run anywhere

Ours: the training set on the device as uint8, per-example crop + flip on the device, bf16 autocast,
channels_last, cudnn.benchmark, fused Adam, no host sync inside the step (step.build_step, the same code
train.py runs), for the scratch step and the full "ours" step, each eager and graphed. Typical: torchvision's
CIFAR100 dataset class (a PIL image per item, then the transforms) through a DataLoader, fp32, loss.item() every
step. Random data, no downloads; medians over --repeats timings. docs/speed.md says what each figure is.
"""
import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import data as D
from checks import UsageError, resolve_device
from l2init import paired, snapshot
from resnet import resnet18
from sampler import batches, easy_hard_weights
from shrink_perturb import shrink_perturb_
from speedup import OneLineParser, write_atomic
from step import build_step, make_optimizer
from train import HelpFormatter, parse_or_raise, run_length

from . import plans as P

PAPER_ITERS, EVAL_EVERY = 39100, 200


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(width, num_classes):
    """Forward + backward FLOPs of one 32x32 image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = resnet18(num_classes, width)
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return counter.get_total_flops() / 2


def our_pipeline(args, device, seed=0, n_train=50000, method="scratch", cuda_graph=False):
    """Our training loop on random data: returns (steps(n) -> None, model, loader). method 'ours' adds
    shrink-perturb, L2-init and easy/hard sampling (random learning speeds, 70% of the examples old)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, args.classes, (n_train,), generator=g)
    loader = D.Loader(x, y, device, seed=seed)
    model = resnet18(args.classes, args.width)
    gen = torch.Generator(device=device).manual_seed(seed)
    anchor, weights = snapshot(model), None
    if method == "ours":
        shrink_perturb_(model)
        weights = easy_hard_weights(torch.rand(n_train, generator=g), y < 0.7 * args.classes).to(device)
    model = model.to(device, memory_format=torch.channels_last)
    reg = paired(model, anchor) if method == "ours" else None  # the anchor moved to the model's device
    it = batches(n_train, args.batch_size, gen, weights)
    opt = make_optimizer(model, 1e-3, device, cuda_graph)
    amp = torch.bfloat16 if device.type == "cuda" else None
    torch.backends.cudnn.benchmark = device.type == "cuda"
    step, _ = build_step(model, opt, loader, args.batch_size, reg, 0.01, amp,
                         forward=torch.compile(model) if args.compile else None, cuda_graph=cuda_graph)

    def steps(n):
        for _ in range(n):
            step(next(it), 1e-3)  # as train.py: loss summed on the device, never read here

    return steps, model, loader


def matmul_tflops(device, repeats=5):
    """The measured ceiling: TFLOP/s of an 8192 x 8192 bf16 matmul on a GPU (1024, fp32 on a CPU)."""
    n, dtype, reps = (8192, torch.bfloat16, 20) if device.type == "cuda" else (1024, torch.float32, 2)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    ms = median_ms(lambda: [a @ b for _ in range(reps)], reps, repeats, device)
    return 2 * n ** 3 / (ms / 1000) / 1e12


def setup_seconds(device, n_train=50000):
    """What train.py does before its first step that scales with the data: channel statistics of the whole
    training set and the move of the uint8 images to the device."""
    x, y = torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8), torch.zeros(n_train, dtype=torch.int64)

    def setup():
        mean, std = D.channel_stats(x, device)
        D.Loader(x, y, device, mean=mean, std=std)

    return median_ms(setup, 1, 1, device) / 1000


def median_ms(fn, n, repeats, device):
    """Median wall milliseconds of fn() over `repeats` timings, divided by n (e.g. per step)."""
    ms = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ms.append((time.perf_counter() - t0) * 1000 / n)
    return statistics.median(ms)


def time_ours(args, device, method="scratch", cuda_graph=False, n_test=10000):
    """Median ms per training step and per full evaluation of our pipeline, and peak memory (GiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, model, loader = our_pipeline(args, device, method=method, cuda_graph=cuda_graph)
    test_x = torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8).to(device)
    steps(args.warmup)  # real steps, the graph's warm-up and capture among them
    ms = median_ms(lambda: steps(args.steps), args.steps, args.repeats, device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    model.eval()
    evaluate = lambda: D.predict(model, test_x, loader, autocast_dtype=amp).sum().item()  # noqa: E731
    evaluate()  # warm-up (cudnn.benchmark picks its algorithms for the eval batch shape)
    eval_ms = median_ms(evaluate, 1, max(2, args.repeats), device)
    model.train()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return ms, eval_ms, peak


def plan_runs():
    """{plan: [(iterations, records the exact learning speed) of each run]} of every plan of reproduce.sh,
    5 seeds, the paper's setting, as train.py reads each run's flags (train.run_length: shortened schedules end
    early); Fig. 6's chain is counted in full (an upper bound)."""
    out = {}
    for plan, (dataset, split) in P.PLAN_DEFAULTS.items():
        args = argparse.Namespace(seeds=5, dataset=dataset, split=split, compare_to=None, chain_scale=1.0,
                                  chain_stop="schedule")
        runs = [parse_or_raise(r.flags) for r in P.PLANS[plan](args, "runs")]
        out[plan] = [(run_length(a), a.learning_speed == "exact") for a in runs]
    return out


def plan_seconds(runs, ms, eval_ms):
    """Projected seconds of plan_runs' runs one at a time: their steps, their evaluations (train.py's: at
    iteration 0, every EVAL_EVERY and at the end), and the exact learning-speed passes (one eval pass over the
    N training images per epoch of N / 128 steps: 128 / 10,000 of an evaluation per step, whatever N)."""
    return sum(iters * ms / 1000 + (math.ceil(iters / EVAL_EVERY) + 1) * eval_ms / 1000
               + records * iters * 128 / 10000 * eval_ms / 1000 for iters, records in runs)


def time_typical(args, device):
    """Median ms per training step of the usual torchvision + DataLoader + fp32 eager pipeline."""
    import numpy as np
    import torchvision.transforms as T
    from torchvision.datasets import CIFAR100

    rng = np.random.default_rng(0)  # random images: no download; the per-image cost is the same
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))])
    n = 50000  # CIFAR-100's training set
    ds = CIFAR100.__new__(CIFAR100)  # its own __getitem__ (a PIL image, then the transforms), without its files
    ds.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    ds.targets = rng.integers(0, args.classes, n).tolist()
    ds.transform, ds.target_transform = tf, None
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                     pin_memory=device.type == "cuda", drop_last=True,
                                     persistent_workers=workers > 0)
    model = resnet18(args.classes, args.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    forever = (b for _ in itertools.count() for b in dl)  # a fresh pass over dl per epoch

    def steps(n):
        for xb, yb in itertools.islice(forever, n):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the usual per-step logging

    steps(args.warmup)
    return median_ms(lambda: steps(args.steps), args.steps, args.repeats, device)


def time_concurrent(args, argv, k, cuda_graph):
    """Aggregate iterations/s of k processes training side by side on one device (the full "ours" step), each
    a worker of this command line (argv)."""
    start_at = time.time() + 20 + 10 * k + (60 if args.compile else 0)  # after every worker's warm-up
    cmd = [sys.executable, "-m", __spec__.name, *argv, "--worker", "--start-at", str(start_at)] + \
        ["--graph"] * cuda_graph
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return sum(r["it_per_s"] for r in results), sum(r["late"] for r in results)


def time_streams(args, device, k):
    """Aggregate iterations/s of k graphed "ours" runs in this one process, each replaying its own CUDA graph
    on its own stream, step after step: the other way to run several runs on one GPU (one CPU thread feeds
    them all, and the GPU may overlap their kernels)."""
    pipes = [our_pipeline(args, device, seed=i, method="ours", cuda_graph=True)[0] for i in range(k)]
    streams = [torch.cuda.Stream(device) for _ in range(k)]
    for steps, stream in zip(pipes, streams):
        with torch.cuda.stream(stream):
            steps(args.warmup)  # each run's warm-up and capture

    def all_steps():
        for _ in range(args.steps):
            for steps, stream in zip(pipes, streams):
                with torch.cuda.stream(stream):
                    steps(1)

    return k * 1000 / median_ms(all_steps, args.steps, args.repeats, device)


def worker(args, device):
    steps, _, _ = our_pipeline(args, device, seed=os.getpid(), method="ours", cuda_graph=args.graph)
    steps(args.warmup)
    sync(device)
    late = time.time() > args.start_at
    time.sleep(max(0.0, args.start_at - time.time()))
    ms = median_ms(lambda: steps(args.steps), args.steps, 1, device)
    print(json.dumps({"it_per_s": 1000 / ms, "late": late}))


def main(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64 is the paper's)")
    p.add_argument("--batch-size", type=int, default=128, help="examples per training step")
    p.add_argument("--classes", type=int, default=100, help="outputs of the model's head")
    p.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (the graph is captured in them)")
    p.add_argument("--repeats", type=int, default=5, help="timings per figure; the median is reported")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in our pipeline (eager only)")
    p.add_argument("--no-typical", action="store_true", help="skip the typical pipeline")
    p.add_argument("--workers", type=int, help="DataLoader workers of the typical pipeline (default: min(8, CPUs))")
    p.add_argument("--concurrency", default=None, help="K values to try, e.g. 1,2,4 (default: 1,2,4,8 on a GPU)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--graph", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)  # train.py's: a bad --device is a one-line error
    except UsageError as e:
        p.error(str(e))
    if args.worker:
        return worker(args, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = {"device": name, "torch": torch.__version__, "width": args.width, "batch_size": args.batch_size,
           "date": time.strftime("%Y-%m-%d"), "command": "python -m repro.bench " + " ".join(argv)}
    print(f"bench: {name}, torch {torch.__version__}, ResNet-18 width {args.width}, batch {args.batch_size}, "
          f"median of {args.repeats} x {args.steps} steps, {out['date']}", flush=True)
    ceiling = matmul_tflops(device)
    flops = flops_per_image(args.width, args.classes)
    out.update(matmul_tflops=ceiling, gflop_per_image=flops / 1e9, setup_s=setup_seconds(device))
    print(f"ceiling  : {ceiling:8.3g} TFLOP/s ({'bf16' if device.type == 'cuda' else 'fp32'} matmul, measured) | "
          f"{flops / 1e9:.2f} GFLOP per image and step | set-up (stats + data to device) {out['setup_s']:.2f} s",
          flush=True)
    graphs = (False, True) if device.type == "cuda" and not args.compile else (False,)
    best = None
    for method in ("scratch", "ours"):
        for graph in graphs:
            key = f"{method}_{'graph' if graph else 'eager'}"
            ms, eval_ms, peak = time_ours(args, device, method, graph)
            tflops = flops * args.batch_size / (ms / 1000) / 1e12
            r = out[key] = {"ms_per_iter": ms, "images_per_s": args.batch_size / ms * 1000, "eval_ms": eval_ms,
                            "tflops": tflops, "pct_ceiling": 100 * tflops / ceiling, "peak_gib": peak,
                            "full_run_s": plan_seconds([(PAPER_ITERS, False)], ms, eval_ms)}  # one x1 run
            print(f"{key:14s}: {ms:8.3f} ms/it | {r['images_per_s']:9.0f} img/s | {tflops:6.3g} TFLOP/s "
                  f"({r['pct_ceiling']:4.1f}% of ceiling) | eval {eval_ms:7.1f} ms / 10,000 "
                  f"| peak {peak:.2f} GiB | full run {r['full_run_s']:7.1f} s", flush=True)
            if method == "ours" and (best is None or ms < best[1]):
                best = (key, ms, eval_ms, graph)
    key, ms, eval_ms, graph = best
    out["plans_h_one_at_a_time"], runs = {}, plan_runs()
    for plan, rs in runs.items():
        hours = out["plans_h_one_at_a_time"][plan] = plan_seconds(rs, ms, eval_ms) / 3600
        print(f"projected: {plan:9s} {len(rs):4d} runs, {hours:6.2f} h one at a time ({key})", flush=True)
    table1_iters = sum(iters for iters, _ in runs["table1"])
    if not args.no_typical:
        tms = time_typical(args, device)
        out.update(typical_ms_per_iter=tms, speedup_over_typical=tms / ms)
        print(f"typical  : {tms:8.3f} ms/it | {args.batch_size / tms * 1000:9.0f} img/s | {key} is "
              f"{tms / ms:.2f}x faster", flush=True)
    ks = args.concurrency or ("1,2,4,8" if device.type == "cuda" else "")
    for k in [int(v) for v in ks.split(",") if v.strip()]:
        agg, late = time_concurrent(args, argv, k, graph)
        out[f"aggregate_it_per_s_k{k}"] = agg
        print(f"K={k}      : {agg:8.1f} it/s aggregate ({agg / k:.1f} per run, {key})"
              + (f"; {late} worker(s) started late, overlap partial" if late else "") +
              f" | Table 1 at this rate {table1_iters / agg / 3600:5.2f} h (training only)", flush=True)
        if device.type == "cuda" and not args.compile and k > 1:
            agg = time_streams(args, device, k)
            out[f"aggregate_it_per_s_k{k}_streams"] = agg
            print(f"K={k} streams: {agg:8.1f} it/s aggregate, one process, a graph per run on its own stream",
                  flush=True)
    if args.json:
        write_atomic(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
