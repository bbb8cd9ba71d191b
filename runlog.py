"""A run folder as train.py writes and leaves it, and what reads it: its log.jsonl (read_log; is_finished: the
summary line is written last, so a log without it is a run that did not finish), the runs of a table grouped by
row over seeds (group_runs, refusing what would mix configurations, data or copies of one run), the log being
written (LogWriter: log.jsonl.part, renamed when the run is finished) under the folder's lock (lock_run: one
process per run folder), and atomic writes (replace_atomic: a reader, or a killed process, never sees half a
file).

    log.jsonl: {"event": "header", "label", "config", "group", "data", ...}   the run's configuration
               {"event": "eval", "iter", "acc", "train_seconds", ...}         one per evaluation
               {"event": "summary", "max_acc", ...}                           last: the run is finished

Standard library only: train.py, checks.py and the driver (repro/: its tables, repro.table) go through it.
"""
import contextlib
import json
import math
import os
import sys


class UsageError(Exception):
    """Bad input (here: a run folder in use, finished, or not writable): one line on stderr, exit code 2."""


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


def lock_run(out, overwrite=False, what="another training process"):
    """Make --out and lock it for this process (out/.lock, flock: the kernel drops it when the process dies,
    however it dies, so a stale lock file is simply taken over). Returns the handle for unlock_run.

    Two processes training into one folder would both write log.jsonl.part and corrupt it; the second
    gets a one-line error instead. The finished-run check is repeated under the lock: another process may
    have finished this run since validate()."""
    import fcntl

    try:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, ".lock")
        while True:
            f = open(path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                f.close()
                raise UsageError(f"{out} is in use by {what} (pid {holder})") from None
            if os.path.exists(path) and os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                break
            f.close()  # the holder removed the file as we opened it: lock the new one
    except OSError as e:
        raise UsageError(f"cannot write into --out {out}: {e.strerror or e}") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    if is_finished(out) and not overwrite:
        unlock_run(f)
        raise UsageError(f"{out} already holds a finished run (use --overwrite to replace it)")
    return f


def unlock_run(handle):
    """Remove the lock file while holding it (a process waiting on the old file re-checks: see lock_run)."""
    try:
        os.remove(handle.name)
    except OSError:
        pass
    handle.close()


class LogWriter:
    """A run's log.jsonl.part, under the folder's lock from open to close: log(record) appends one JSON line and
    flushes it; finish() renames the file to log.jsonl, the mark of a finished run; close(discard=True) leaves no
    half-written run behind. A failed write is an OSError naming the file."""

    def __init__(self, out, overwrite=False):
        self.lock = lock_run(out, overwrite)
        self.path, self.done = os.path.join(out, "log.jsonl.part"), os.path.join(out, "log.jsonl")
        try:
            self.f = open(self.path, "w")
        except OSError:
            unlock_run(self.lock)
            raise

    def __call__(self, record):
        try:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror, self.path) from None

    def finish(self):
        os.replace(self.path, self.done)
        self.close()

    def close(self, discard=False):
        try:
            self.f.close()  # flushes: fails too on a full disk
        except OSError:
            pass
        finally:
            if discard:
                with contextlib.suppress(OSError):
                    os.remove(self.path)
            unlock_run(self.lock)
