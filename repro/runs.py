"""A table's runs, read from their train.py logs (runlog.read_log): check_log and check_summary (what a table needs of a
log's evaluations and summary) and group_runs (the runs grouped by row over seeds, refusing what would mix
configurations, data or copies of one run). Used by the plans' tables (report.py), the driver's checks (reproduce.py)
and `python -m repro.table`.
"""
import json
import os
import sys

from runlog import is_number, log_path, max_acc_of, read_log


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


def check_summary(path, summary):
    """A summary line's accuracies as the tables read them, as one readable ValueError: max_acc a finite number,
    train_acc one too or None (logs older than it)."""
    max_acc_of(path, summary)
    v = summary.get("train_acc")
    if v is not None and not is_number(v):
        raise ValueError(f"{path}: its summary has train_acc = {v}")


def group_runs(run_dirs, warn=lambda msg: print(f"warning: {msg}", file=sys.stderr)):
    """{label: [(header, evals), ...]} over seeds. Runs sharing a label must share their method config; all
    runs must be on the same data (where their logs record it). A run given twice (the same file, or a copy:
    same label, configuration and seeds) is counted once or refused, never as two seeds; an unfinished run
    is skipped with a warning."""
    groups, keys, seen, runs_of, data = {}, {}, set(), {}, None
    for d in run_dirs:
        path = os.path.realpath(log_path(d))
        if path in seen:
            warn(f"{d} is given twice; counted once")
            continue
        seen.add(path)
        header, evals, summary = read_log(d)
        if summary is None:
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
