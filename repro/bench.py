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
import importlib.util
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
from runlog import OneLineParser, write_atomic
from sampler import batches, easy_hard_weights
from shrink_perturb import shrink_perturb_
from step import build_step, make_optimizer
from train import HelpFormatter, run_length

from . import plans as P
from . import reproduce

PAPER_RUN = (P.PAPER_SCALE["iters"], False, P.PAPER_SCALE["eval_every"])  # one x1 run of Table 1


def cpu_name():
    """The CPU's model name, its cores and torch's threads, and whether it has native bf16 (AVX512-BF16 / AMX)."""
    model, flags = "CPU", ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), model)
        flags = next((x for x in info.splitlines() if x.startswith("flags")), "")
    except OSError:
        pass
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads, bf16: {'+'.join(bf16) or 'no'})"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(width, num_classes, image_size=32):
    """Forward + backward FLOPs of one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = resnet18(num_classes, width)
    x = torch.randn(2, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return counter.get_total_flops() / 2


def our_pipeline(args, device, seed=0, n_train=50000, method="scratch", cuda_graph=False, amp="auto",
                 memory_format=torch.channels_last):
    """Our training loop on random data: returns (steps(n) -> None, model, loader). method 'ours' adds
    shrink-perturb, L2-init and easy/hard sampling (random learning speeds, 70% of the examples old). amp: the
    autocast dtype or None; "auto" is train.py's default (bf16 on a GPU, fp32 on a CPU)."""
    g = torch.Generator().manual_seed(seed)
    s = args.image_size
    x = torch.randint(0, 256, (n_train, 3, s, s), dtype=torch.uint8, generator=g)
    y = torch.randint(0, args.classes, (n_train,), generator=g)
    loader = D.Loader(x, y, device, seed=seed, memory_format=memory_format)
    model = resnet18(args.classes, args.width)
    gen = torch.Generator(device=device).manual_seed(seed)
    anchor, weights = snapshot(model), None
    if method == "ours":
        shrink_perturb_(model)
        weights = easy_hard_weights(torch.rand(n_train, generator=g), y < 0.7 * args.classes).to(device)
    model = model.to(device, memory_format=memory_format)
    reg = paired(model, anchor) if method == "ours" else None  # the anchor moved to the model's device
    it = batches(n_train, args.batch_size, gen, weights)
    opt = make_optimizer(model, 1e-3, device, cuda_graph)
    amp = (torch.bfloat16 if device.type == "cuda" else None) if amp == "auto" else amp
    torch.backends.cudnn.benchmark = device.type == "cuda"
    step, _ = build_step(model, opt, loader, args.batch_size, reg, 0.01, amp,
                         forward=torch.compile(model) if args.compile else None, cuda_graph=cuda_graph)

    def steps(n):
        for _ in range(n):
            step(next(it), 1e-3)  # as train.py: loss summed on the device, never read here

    return steps, model, loader


def matmul_tflops(device, repeats=5, dtype=None):
    """The measured ceiling: TFLOP/s of an 8192 x 8192 bf16 matmul on a GPU (1024 x 1024, fp32 unless dtype
    says otherwise, on a CPU)."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 2)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
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


def time_ours(args, device, method="scratch", cuda_graph=False, n_test=10000, amp="auto",
              memory_format=torch.channels_last, eval_batch=None):
    """Median ms per training step and per full evaluation of our pipeline, and peak memory (GiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, model, loader = our_pipeline(args, device, n_train=args.n_train, method=method, cuda_graph=cuda_graph,
                                        amp=amp, memory_format=memory_format)
    test_x = torch.randint(0, 256, (n_test, 3, args.image_size, args.image_size), dtype=torch.uint8).to(device)
    steps(args.warmup)  # real steps, the graph's warm-up and capture among them
    ms = median_ms(lambda: steps(args.steps), args.steps, args.repeats, device)
    amp = (torch.bfloat16 if device.type == "cuda" else None) if amp == "auto" else amp
    model.eval()
    evaluate = lambda: D.predict(model, test_x, loader, eval_batch, amp).sum().item()  # noqa: E731
    evaluate()  # warm-up (cudnn.benchmark picks its algorithms for the eval batch shape)
    eval_ms = median_ms(evaluate, 1, max(2, args.repeats), device)
    model.train()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return ms, eval_ms, peak


def plan_runs(plans=None):
    """{plan: [(iterations, records the exact learning speed, evaluation interval) of each run]} of every plan of
    reproduce.sh (or those named) at its default setting, from the train.py command lines the driver gives them
    (train.run_length: shortened schedules end early); Fig. 6's chain is counted in full (an upper bound)."""
    out = {}
    for plan in plans or P.PLAN_DEFAULTS:
        args = reproduce.build_parser().parse_args(["--plan", plan, "--device", "cpu"])
        runs_dir, _ = reproduce.resolve(args)
        runs = [reproduce.planned(r, args, runs_dir) for r in P.PLANS[plan](args, runs_dir)]
        out[plan] = [(run_length(a), a.learning_speed == "exact", a.eval_every) for a in runs]
    return out


def plan_seconds(runs, ms, eval_ms, n_test=10000):
    """Projected seconds of plan_runs' runs one at a time: their steps, their evaluations (train.py's: at
    iteration 0, every eval_every of the run's plan and at the end), and the exact learning-speed passes (one
    eval pass over the N training images per epoch of N / 128 steps: 128 / n_test of an evaluation per step,
    whatever N). runs: plan_runs' (iterations, records, eval_every)."""
    return sum(iters * ms / 1000 + (math.ceil(iters / eval_every) + 1) * eval_ms / 1000
               + records * iters * 128 / n_test * eval_ms / 1000 for iters, records, eval_every in runs)


def time_typical(args, device):
    """Median ms per training step of the usual torchvision + DataLoader + fp32 eager pipeline."""
    import numpy as np
    import torchvision.transforms as T
    from torchvision.datasets import CIFAR100

    rng = np.random.default_rng(0)  # random images: no download; the per-image cost is the same
    s = args.image_size
    tf = T.Compose([T.RandomCrop(s, padding=s // 8), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))])
    n = args.n_train  # CIFAR-100's training set by default
    ds = CIFAR100.__new__(CIFAR100)  # its own __getitem__ (a PIL image, then the transforms), without its files
    ds.data = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
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


def cpu_figures(args, argv, device, out, flops, runs):
    """On a CPU, what the choice of the laptop plan's defaults rests on: the fp32 and bf16 matmul ceilings; the
    "ours" step in fp32 channels_last (train.py's CPU default), fp32 contiguous, bf16 autocast (changes the
    numbers) and torch.compile, each as ms per step and % of its precision's ceiling; one evaluation at the CPU's
    evaluation batch (data.EVAL_BATCH) and at the GPU's; the evaluations' and learning-speed passes' share of the
    laptop plan (runs: its plan_runs); and K processes of cores/K threads side by side."""
    cores = torch.get_num_threads()
    ceil = {"fp32": out["matmul_tflops"], "bf16": matmul_tflops(device, dtype=torch.bfloat16)}
    out["matmul_tflops_bf16"] = ceil["bf16"]
    print(f"ceilings : fp32 {ceil['fp32'] * 1000:6.1f} GFLOP/s | bf16 {ceil['bf16'] * 1000:6.1f} GFLOP/s "
          f"({cores} threads, 1024 x 1024 matmul, measured)", flush=True)
    def show(name, amp, ms, eval_ms):
        pct = 100 * flops * args.batch_size / (ms / 1000) / 1e12 / ceil["bf16" if amp else "fp32"]
        out[f"cpu_{name.replace(' ', '_')}"] = {"ms_per_iter": ms, "eval_ms": eval_ms, "pct_ceiling": pct}
        print(f"{name:19s}: {ms:8.2f} ms/it | {args.batch_size / ms * 1000:7.0f} img/s | {pct:4.1f}% of the "
              f"{'bf16' if amp else 'fp32'} ceiling | eval {eval_ms:7.1f} ms / 10,000", flush=True)

    base = out["ours_eager"]  # main's timing of this step: fp32, channels_last, the CPU's evaluation batch
    show("fp32 channels_last", None, base["ms_per_iter"], base["eval_ms"])
    configs = [("fp32 contiguous", None, torch.contiguous_format, False),
               ("bf16 channels_last", torch.bfloat16, torch.channels_last, False),
               ("fp32 compiled", None, torch.channels_last, True)]
    for name, amp, fmt, comp in configs:
        args.compile = comp
        try:
            ms, eval_ms, _ = time_ours(args, device, "ours", amp=amp, memory_format=fmt)
        except Exception as e:  # noqa: BLE001 - torch.compile needs a C++ compiler; report, go on
            print(f"{name:19s}: failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})", flush=True)
            continue
        finally:
            args.compile = False
        show(name, amp, ms, eval_ms)
    gpu_batch = D.EVAL_BATCH["cuda"]
    for batch, eval_ms in ((D.EVAL_BATCH["cpu"], base["eval_ms"]),
                           (gpu_batch, time_ours(args, device, "ours", eval_batch=gpu_batch)[1])):
        out[f"cpu_eval_ms_batch{batch}"] = eval_ms
        print(f"eval batch {batch:4d}: {eval_ms:7.1f} ms / 10,000 test images (fp32 channels_last)", flush=True)
    ms, eval_ms = base["ms_per_iter"], base["eval_ms"]
    total = plan_seconds(runs, ms, eval_ms)
    steps = plan_seconds(runs, ms, 0)
    evals = plan_seconds([(i, False, every) for i, _, every in runs], 0, eval_ms)
    out["laptop"] = {"one_at_a_time_h": total / 3600, "eval_share": evals / total,
                     "learning_speed_share": (total - steps - evals) / total}
    print(f"laptop   : {len(runs)} runs, {total / 3600:.2f} h one at a time at this size ({args.width} wide, "
          f"{args.image_size} px); evaluations {100 * evals / total:.0f}%, learning-speed passes "
          f"{100 * (total - steps - evals) / total:.0f}% of it", flush=True)
    for k in [k for k in (1, 2, 4, 8) if k <= cores]:
        agg, late = time_concurrent(args, argv + ["--threads", str(cores // k)], k, False)
        out[f"cpu_aggregate_it_per_s_k{k}"] = agg
        print(f"{k} x {cores // k} threads: {agg:6.2f} it/s aggregate ({agg / k:.2f} per process)"
              + (f"; {late} worker(s) started late" if late else ""), flush=True)


def worker(args, device):
    steps, _, _ = our_pipeline(args, device, seed=os.getpid(), n_train=args.n_train, method="ours",
                               cuda_graph=args.graph)
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
    p.add_argument("--image-size", type=int, default=32, help="side of the (random) square images")
    p.add_argument("--n-train", type=int, default=50000, help="training images (random)")
    p.add_argument("--threads", type=int, help="torch threads (default: one per core)")
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
    if min(args.width, args.batch_size, args.classes, args.image_size, args.n_train, args.steps, args.repeats) < 1:
        p.error("--width, --batch-size, --classes, --image-size, --n-train, --steps and --repeats must be >= 1")
    if not (args.no_typical or args.worker or importlib.util.find_spec("torchvision")):
        p.error("the typical pipeline needs torchvision (pip install torchvision), or pass --no-typical")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    out = {"device": name, "torch": torch.__version__, "width": args.width, "batch_size": args.batch_size,
           "date": time.strftime("%Y-%m-%d"), "command": "python -m repro.bench " + " ".join(argv)}
    print(f"bench: {name}, torch {torch.__version__}, ResNet-18 width {args.width}, {args.image_size} px, "
          f"batch {args.batch_size}, "
          f"median of {args.repeats} x {args.steps} steps, {out['date']}", flush=True)
    ceiling = matmul_tflops(device)
    flops = flops_per_image(args.width, args.classes, args.image_size)
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
                            "full_run_s": plan_seconds([PAPER_RUN], ms, eval_ms)}
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
    table1_iters = sum(iters for iters, _, _ in runs["table1"])
    if not args.no_typical:
        tms = time_typical(args, device)
        out.update(typical_ms_per_iter=tms, speedup_over_typical=tms / ms)
        print(f"typical  : {tms:8.3f} ms/it | {args.batch_size / tms * 1000:9.0f} img/s | {key} is "
              f"{tms / ms:.2f}x faster", flush=True)
    if device.type == "cpu" and not args.compile:
        cpu_figures(args, argv, device, out, flops, runs["laptop"])
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
