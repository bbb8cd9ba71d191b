"""A run folder as train.py leaves it, and what reads it: its log.jsonl (read_log; is_finished: the summary line
is written last, so a log without it is a run that did not finish), the runs of a table grouped by row over seeds
(group_runs, refusing what would mix configurations, data or copies of one run), and atomic writes (replace_atomic:
a reader, or a killed process, never sees half a file).

    log.jsonl: {"event": "header", "label", "config", "group", "data", ...}   the run's configuration
               {"event": "eval", "iter", "acc", "train_seconds", ...}         one per evaluation
               {"event": "summary", "max_acc", ...}                           last: the run is finished

Standard library only: train.py, checks.py and the driver (repro/: its tables, repro.table) read logs through it.
"""
import json
import math
import os
import sys

def read_lines(run_dir):
    """(path, every line of a run's log.jsonl as a dict). Raises ValueError on a file it cannot parse."""
    path = os.path.join(run_dir, "log.jsonl") if os.path.isdir(run_dir) else run_dir
    try:
        with open(path) as f:
            return path, [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read log {path}: {e}") from None


# train.py flags added after runs were logged, at the value every run had before them (a fresh Adam, the whole
# training set): a log without the key ran with that value, so its runs stay comparable with newer ones. A flag
# whose default changed what runs do (--sp-keep-bn-stats) is not here: a log without it is another configuration.
SAME_AS_BEFORE = {"keep_optimizer_state": False, "per_class": 0}


def read_log(run_dir):
    """A run's log.jsonl -> (header, evaluations, summary or None), the header's method configuration completed
    by SAME_AS_BEFORE. Raises ValueError on a bad file."""
    path, lines = read_lines(run_dir)
    odd = next((i for i, x in enumerate(lines) if not isinstance(x, dict)), None)
    if odd is not None:
        raise ValueError(f"{path}: line {odd + 1} is not a JSON object")
    if not lines or lines[0].get("event") != "header":
        raise ValueError(f"{path} does not start with a header line")
    if isinstance(lines[0].get("group"), dict):
        lines[0]["group"] = {**SAME_AS_BEFORE, **lines[0]["group"]}
    evals = [x for x in lines if x.get("event") == "eval"]
    summary = next((x for x in lines if x.get("event") == "summary"), None)
    return lines[0], evals, summary


def is_finished(run_dir):
    """Whether a run folder holds a log with its summary line (train.py writes it last)."""
    try:
        return read_log(run_dir)[2] is not None
    except ValueError:
        return False


def is_number(v):
    """Whether a logged value is a finite number (JSON's true/false are not; NaN and Infinity are refused)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def check_log(path, header, evals):
    """What a table needs of a log, as one readable ValueError: a label, a method configuration, and at least
    one evaluation with a finite accuracy and training time."""
    for key, kind in (("label", str), ("group", dict)):
        if not isinstance(header.get(key), kind):
            raise ValueError(f"{path}: the header has no {key} (not a train.py log?)")
    if not isinstance(header.get("config", {}), dict):
        raise ValueError(f"{path}: the header's config is not an object")
    if not evals:
        raise ValueError(f"{path}: no evaluations logged")
    for e in evals:
        for key in ("iter", "acc", "train_seconds"):
            v = e.get(key)
            if not is_number(v):
                raise ValueError(f"{path}: evaluation at iteration {e.get('iter')} has {key} = {v}")


def group_runs(run_dirs, finished_only=True, warn=lambda msg: print(f"warning: {msg}", file=sys.stderr)):
    """{label: [(header, evals), ...]} over seeds. Runs sharing a label must share their method config; all
    runs must be on the same data (where their logs record it). A run given twice (the same file, or a copy:
    same label, configuration and seeds) is counted once or refused, never as two seeds; an unfinished run
    is skipped with a warning."""
    groups, keys, seen, runs_of, data = {}, {}, set(), {}, None
    for d in run_dirs:
        path = os.path.realpath(os.path.join(d, "log.jsonl") if os.path.isdir(d) else d)
        if path in seen:
            warn(f"{d} is given twice; counted once")
            continue
        seen.add(path)
        header, evals, summary = read_log(d)
        if finished_only and summary is None:
            warn(f"{d} is unfinished (no summary line); left out")
            continue
        check_log(path, header, evals)
        label = header["label"]
        key = json.dumps(header["group"], sort_keys=True)
        if keys.setdefault(label, key) != key:
            raise ValueError(f"runs labelled '{label}' differ in configuration (give them distinct --label)")
        config = header.get("config", {})
        run = (label, key, config.get("seed"), config.get("split_seed"))
        if runs_of.setdefault(run, d) != d:
            raise ValueError(f"{runs_of[run]} and {d} are the same run (label '{label}', seed {run[2]}); "
                             "a copy would count as two seeds")
        if header.get("data") is not None:
            data = data or (header["data"], d)
            if header["data"] != data[0]:
                raise ValueError(f"{data[1]} and {d} were trained on different data")
        groups.setdefault(label, []).append((header, evals))
    return groups


def replace_atomic(path, write):
    """write(tmp) into a temporary file beside `path`, then rename it over `path`: a reader, or a killed
    process, never sees a half-written file. The temporary file is removed if write fails."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_atomic(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    replace_atomic(path, write)
