"""A run folder as train.py leaves it: log.jsonl, written as log.jsonl.part by log_writer under the folder's lock
(lock_run) and renamed when the run is finished; read by read_log (a log without its summary line, written last,
is a run that did not finish). Also atomic writes (replace_atomic) and the one-line errors of every command.

    log.jsonl: {"event": "header", "label", "config", "group", "data", ...}   the run's configuration
               {"event": "eval", "iter", "acc", "train_seconds", ...}         one per evaluation
               {"event": "summary", "max_acc", ...}                           last: the run is finished

Standard library only: train.py, checks.py, ckpt.py and the driver (repro/) go through it.
"""
import argparse
import contextlib
import json
import math
import os
import pathlib


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2 (train.py, reproduce.sh, checks.py)."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block (train.py, reproduce.sh, repro.table)
        self.exit(2, f"{self.prog}: error: {message}\n")


def log_path(run_dir):
    """A run folder's log.jsonl; a path that is not a folder is taken to be the log itself."""
    return os.path.join(run_dir, "log.jsonl") if os.path.isdir(run_dir) else run_dir


def read_lines(run_dir):
    """(path, every line of a run's log.jsonl as a dict). Raises ValueError on a file it cannot parse."""
    path = log_path(run_dir)
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


def read_finished(run_dir):
    """read_log of a finished run, or None (no log, an unreadable one, or a run that did not finish)."""
    try:
        log = read_log(run_dir)
    except ValueError:
        return None
    return log if log[2] is not None else None


def is_finished(run_dir):
    return read_finished(run_dir) is not None


STALE = "log.jsonl.stale"  # a finished run's log set aside by the driver (repro/reproduce.py's set_aside)


def was_set_aside(run_dir):
    """Set aside by the driver and not trained since (log_writer removes the mark when the run finishes again)."""
    return os.path.isfile(os.path.join(run_dir, STALE)) and not is_finished(run_dir)


def is_number(v):
    """Whether a logged value is a finite number (JSON's true/false are not; NaN and Infinity are refused)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def max_acc_of(path, summary):
    """A summary's max_acc as the tables and --stop-at-acc-of read it: else a ValueError naming its log `path`."""
    v = summary.get("max_acc")
    if not is_number(v):
        raise ValueError(f"{path}: its summary has max_acc = {v}")
    return v


def replace_atomic(path, write):
    """write(tmp) into a temporary file beside `path`, then rename it over `path`: a reader, or a killed
    process, never sees a half-written file. The temporary file is removed if anything fails; an OSError about it
    (or about no file) names `path`, one about another file (a missing source) keeps its own name."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, path, tmp):
            raise OSError(e.errno, e.strerror, path) from None
        raise


def write_atomic(path, text):
    replace_atomic(path, lambda tmp: pathlib.Path(tmp).write_text(text))


def refuse_finished(out, overwrite):
    """A finished run in `out` is replaced only with --overwrite."""
    if is_finished(out) and not overwrite:
        raise UsageError(f"{out} already holds a finished run (use --overwrite to replace it)")


def lock_run(out, what="another training process"):
    """Make the folder `out` and lock it for this process (out/.lock holding its pid; flock: the kernel drops it
    when the process dies, so a stale lock file is taken over). Returns the handle for unlock_run. A second
    process gets a one-line error naming the holder instead."""
    import fcntl

    path = os.path.join(out, ".lock")
    f = held = None
    try:
        os.makedirs(out, exist_ok=True)
        while not held:
            f = open(path, "a+b", buffering=0)  # unbuffered: close() never writes the pid again
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with f:
                    f.seek(0)
                    holder = f.read().decode(errors="replace").strip() or "?"  # as written, whatever it holds
                raise UsageError(f"{out} is in use by {what} (pid {holder})") from None
            with contextlib.suppress(FileNotFoundError):  # the holder may remove it at any moment
                held = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
            if not held:
                f.close()  # the holder removed the file as we opened it: lock the new one
        f.truncate(0)
        f.write(str(os.getpid()).encode())
    except OSError as e:
        if held:
            unlock_run(f)
        elif f is not None:
            f.close()
        raise UsageError(f"cannot write into {out}: {e.strerror or e}") from None
    return f


def unlock_run(handle):
    """Remove the lock file while holding it (a process waiting on the old file re-checks: see lock_run)."""
    with contextlib.suppress(OSError):
        os.remove(handle.name)
    handle.close()


@contextlib.contextmanager
def log_writer(out, overwrite=False):
    """`with log_writer(out) as log:` log(record) appends one JSON line to log.jsonl.part (log.path) and flushes
    it, under the folder's lock. Leaving the block renames it to log.jsonl, the mark of a finished run (a log the
    driver set aside, log.jsonl.stale, goes: it marks a run not trained since); an OSError (a full disk) removes
    it; any other error (a diverged loss, Ctrl-C) leaves it to be read. A finished run is refused without
    `overwrite` (under the lock: another process may have finished it); with it, the run stays whole until
    log.unfinish(), which the caller runs just before replacing the run's ckpt.pt."""
    part, done = os.path.join(out, "log.jsonl.part"), os.path.join(out, "log.jsonl")
    lock = lock_run(out)
    try:
        refuse_finished(out, overwrite)
        f = open(part, "w")  # an OSError names `part` already

        def log(record):
            try:
                f.write(json.dumps(record) + "\n")
                f.flush()
            except OSError as e:  # a write to an open file names none
                with contextlib.suppress(OSError):
                    f.close()  # now: closing later would flush the same line again, failing without a name
                raise OSError(e.errno, e.strerror, part) from None

        def unfinish():
            with contextlib.suppress(FileNotFoundError):
                os.remove(done)

        log.path, log.unfinish = part, unfinish  # path: where an unfinished run's log is left to be read
        try:
            with f:
                yield log
            os.replace(part, done)
            with contextlib.suppress(OSError):  # finished again: a log set aside before (the driver's mark) is void
                os.remove(os.path.join(out, STALE))
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(part)
            raise
    finally:
        unlock_run(lock)
