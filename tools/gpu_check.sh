#!/usr/bin/env bash
# The checks and measurements of this code on a GPU, one stage per run (each fits in under 10 minutes) and each
# leaving what it measured under $OUT (default /tmp/gpu_out).
#
# The table2a stage reads CIFAR-10 as JPEG folders from data/cifar10-jpg.tar.gz (train/ and test/ of class
# folders); data/ is git-ignored, so put the archive there first. Then:
#     bash tools/gpu_check.sh bringup    # GPU tests, the quick table2a on real CIFAR-10, bench smoke
#     bash tools/gpu_check.sh bench      # python -m repro.bench: every step configuration, K = 1, 2, 4, 8
#     bash tools/gpu_check.sh table2a    # full-length Table 2a on real CIFAR-10, the next seed, in a detached
#                                        # driver: waits BUDGET s (540) on it; run again, waits on the same one
#     bash tools/gpu_check.sh report     # rebuild results/table2a_cifar10.md from the kept logs (no GPU needed)
#     bash tools/gpu_check.sh all        # bringup (tests beside the quick plan) and bench under a deadline
#                                        # (BUDGET s, 560); everything in 6 files under $OUT
# After table2a: copy $OUT/table2a_logs.tar.gz to results/table2a_cifar10_logs.tar.gz and commit it; the next
# table2a run restores it first, so seeds accumulate across runs (the driver skips finished runs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export DATA=/tmp/cifar10-jpg RUNS=runs/table2a-cifar10jpg PYTHONUNBUFFERED=1
LOGS=results/table2a_cifar10_logs.tar.gz
export JOBS=${JOBS:-1}  # Table 2a's runs side by side: 1, as K = 2-8 processes trained no faster (docs/speed.md)
export ARGS=${ARGS:-}  # added to every reproduce.sh run, e.g. a CPU dry run: ARGS="--device cpu --width 8 --iters 20"
command -v python >/dev/null || { mkdir -p /tmp/bin && ln -sf "$(command -v python3)" /tmp/bin/python &&
    export PATH=/tmp/bin:$PATH; }  # an image with python3 alone

info() {  # the GPU, the cores, torch, torchvision
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
    python -c "import importlib.metadata as m, importlib.util, torch; print('torch', torch.__version__, 'cuda',
        torch.version.cuda, 'torchvision', m.version('torchvision') if importlib.util.find_spec('torchvision')
        else 'not installed')"
}

data() {
    [ -d "$DATA/train" ] || { mkdir -p "$DATA" && tar -xzf data/cifar10-jpg.tar.gz -C "$DATA"; }  # train/, test/
}

restore() {  # the kept logs of finished seeds into the runs folder
    mkdir -p "$RUNS" && { [ ! -f "$LOGS" ] || tar -xzf "$LOGS" -C "$RUNS"; }
}

finished_seeds() {  # seeds whose five runs all finished: a run's log.jsonl appears when it ends
    (cd "$RUNS" && for s in 8+2/seed*; do [ "$(ls "$s"/*/log.jsonl 2>/dev/null | wc -l)" -eq 5 ] && echo "$s"; done)
}

quick() {  # 4,000 iterations, 2 seeds; 4 runs side by side, as measured (10 runs in 4.1 min on an H200)
    ./reproduce.sh --quick --plan table2a --dataset folder --data-dir "$DATA" --compare-to cifar10 --split 8+2 \
        --runs runs/quick-cifar10jpg --jobs-per-gpu 4 $ARGS "$@"
}

table2a() {  # full length, the paper's defaults, no tuning; --seeds 5: finished seeds are skipped
    ./reproduce.sh --plan table2a --dataset folder --data-dir "$DATA" --compare-to cifar10 --split 8+2 \
        --seeds 5 --runs "$RUNS" --results results --jobs-per-gpu "$JOBS" $ARGS "$@"
}
export -f quick table2a  # for the bash -c of timeout and setsid

case "${1:-}" in
bringup)
    info 2>&1 | tee "$OUT/gpu.txt"
    python -m pytest -q tests -x 2>&1 | tee "$OUT/pytest.txt" | tail -5
    data
    quick --results "$OUT/quick" 2>&1 | tee "$OUT/quick.txt" | tail -30
    python -m repro.bench --steps 50 --warmup 10 --repeats 3 --concurrency 1,2 --no-typical 2>&1 |
        tee "$OUT/bench_smoke.txt"
    ;;
bench)
    python -m repro.bench --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
    ;;
table2a)  # a seed (>10 min on an H200) outlasts BUDGET: the driver runs detached, each run of the stage waits
    data
    PID=$RUNS/driver.pid
    if ! { [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; }; then
        restore
        n=$(finished_seeds | wc -l)
        # one seed at a time, so that a driver stopped early leaves whole seeds behind
        setsid nohup bash -c 'table2a --seeds "$0"' "$((n < 5 ? n + 1 : 5))" >>"$RUNS/driver.txt" 2>&1 </dev/null &
        echo $! >"$PID"
    fi
    END=$((SECONDS + ${BUDGET:-540}))
    while kill -0 "$(cat "$PID")" 2>/dev/null && [ "$SECONDS" -lt "$END" ]; do sleep 5; done
    kill -0 "$(cat "$PID")" 2>/dev/null && echo "table2a: the driver is still running; run this stage again to wait"
    cp "$RUNS/driver.txt" "$OUT/table2a.txt" && tail -30 "$OUT/table2a.txt"
    finished_seeds | (cd "$RUNS" && xargs -r -I{} find {} -name log.jsonl | tar -czf "$OUT/table2a_logs.tar.gz" -T -)
    cp results/table2a_cifar10.* "$OUT/" 2>/dev/null || true  # the report exists once a seed has finished
    ;;
all)  # bringup and bench in one run under a deadline: the tests use the CPUs while the quick plan uses the GPU
    END=$((SECONDS + ${BUDGET:-560}))
    left() { local t=$((END - SECONDS - 15)); [ "$t" -gt "$1" ] && t=$1; echo $((t > 1 ? t : 1)); }
    W=/tmp/gpu_all && rm -rf "$W" && mkdir -p "$W/quick"
    info 2>&1 | tee "$OUT/gpu.txt"
    data
    OMP_NUM_THREADS=2 timeout "$(left 300)" ${PYTEST:-python -m pytest -q -p no:cacheprovider -n 6 tests} \
        >"$OUT/pytest.txt" 2>&1 &
    tests=$!
    timeout "$(left 300)" bash -c 'quick --results "$0"' "$W/quick" >"$OUT/quick.txt" 2>&1
    echo "quick table2a: exit $? at ${SECONDS} s"
    wait $tests
    echo "pytest: exit $? at ${SECONDS} s"; tail -3 "$OUT/pytest.txt"
    timeout "$(left 100000)" python -m repro.bench --json "$W/bench.json" ${BENCH_ARGS:-} >"$OUT/bench.txt" 2>&1
    echo "bench: exit $? at ${SECONDS} s"; cp "$W/bench.json" "$OUT/" 2>/dev/null
    # the quick plan's logs (unfinished ones too), tables and figures; no checkpoints
    (find runs/quick-cifar10jpg -name 'log.jsonl*'; find "$W/quick" -type f) |
        tar -czf "$OUT/logs.tar.gz" -T - 2>/dev/null
    tail -25 "$OUT/bench.txt"; tail -12 "$OUT/quick.txt"
    ;;
report)
    restore && table2a --report-only --device cpu
    ;;
*)
    echo "usage: bash tools/gpu_check.sh bringup|bench|table2a|report|all" >&2
    exit 2
    ;;
esac
