"""speedup.py (Eq. 1, Eq. 2) on hand-made curves with known answers, and repro.table's command line on
hand-written logs (read by runlog.py, whose atomic write is tested here too)."""
import json
import math
import os

import pytest

from repro.table import main
from runlog import replace_atomic
from speedup import csv_line, iterations_to_reach, row_stats, speedup, speedup_cost

IT = [0, 100, 200, 300, 400]


def test_iterations_to_reach():
    accs = [10, 50, 60, 60, 58]
    assert iterations_to_reach(IT, accs, 60) == 200  # ties at the target count: first >=
    assert iterations_to_reach(IT, accs, 59.4) == 200
    assert iterations_to_reach(IT, accs, 50) == 100
    assert iterations_to_reach(IT, accs, 60.01) is None
    assert iterations_to_reach(IT, accs, 0) == 0


def test_speedup_known_answers():
    ref = [10, 40, 55, 60, 59]  # a_scratch = 60, reached at 300
    fast = [30, 59.5, 61, 62, 62]
    assert speedup(IT, ref, IT, fast, 100) == 300 / 200
    assert speedup(IT, ref, IT, fast, 99) == 300 / 100  # 99% of 60 = 59.4, reached at 100
    assert speedup(IT, ref, IT, ref, 100) == 1.0  # the reference against itself
    assert speedup(IT, ref, IT, ref, 99) == 300 / 300  # 59.4 first reached at 300 by the reference too
    slow = [10, 20, 30, 59.4, 59.9]
    assert speedup(IT, ref, IT, slow, 100) is None  # '/'
    assert speedup(IT, ref, IT, slow, 99) == 1.0  # exactly 59.4 at 300: a tie counts
    assert speedup(IT, ref, IT, [60, 60, 60, 60, 60], 100) == math.inf  # at the target before training


def test_speedup_cost_uses_seconds_at_those_iterations():
    ref, fast = [10, 40, 55, 60, 59], [30, 59.5, 61, 62, 62]
    ref_s, fast_s = [0, 10, 20, 30, 40], [0, 20, 40, 60, 80]  # the fast run costs twice as much per iteration
    assert speedup_cost(IT, ref, ref_s, IT, fast, fast_s, 100) == 30 / 40
    assert speedup_cost(IT, ref, ref_s, IT, [1] * 5, fast_s, 100) is None


def write_run(path, label, seed, accs, group=None, finished=True):
    path.mkdir(parents=True)
    lines = [{"event": "header", "label": label, "group": group or {"label": label}, "config": {"seed": seed}}]
    lines += [{"event": "eval", "iter": i, "acc": a, "train_seconds": i / 100} for i, a in zip(IT, accs)]
    if finished:
        lines.append({"event": "summary", "max_acc": max(accs)})
    (path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def test_cli_averages_seeds_before_speedups(tmp_path, capsys):
    runs = [
        write_run(tmp_path / "s0", "scratch", 0, [10, 40, 50, 62, 60]),
        write_run(tmp_path / "s1", "scratch", 1, [10, 40, 60, 58, 60]),  # mean: 10 40 55 60 60 -> a=60 at 300
        write_run(tmp_path / "o0", "ours", 0, [20, 58, 61, 61, 61]),
        write_run(tmp_path / "o1", "ours", 1, [20, 62, 59, 61, 61]),  # mean: 20 60 60 61 61 -> 60 at 100
        write_run(tmp_path / "n0", "naive", 0, [20, 30, 40, 50, 59]),  # never 59.4: '/' for both
        write_run(tmp_path / "u0", "unfinished", 0, [99] * 5, finished=False),  # skipped
    ]
    md, csv = tmp_path / "t.md", tmp_path / "t.csv"
    assert main(runs + ["--reference", "scratch", "--md", str(md), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines()[2:] if line.startswith("|")}
    assert set(rows) == {"scratch", "ours", "naive"}
    # Max Acc is the maximum of the seed-averaged curve, the same statistic as a_scratch: scratch's mean curve
    # peaks at 60 (iteration 300), where the seeds have 62 and 58 -> 60 +- 2 (s.e. = sample std / sqrt 2)
    assert rows["scratch"][:2] == ["2", "60.00 ± 2.00"]
    # ours peaks at 61 (300; seeds 61, 61); 60 and 59.4 are first reached at 100. 61 is within one combined
    # s.e. (hypot(0, 2.0) = 2) of both targets, so both verdicts are marked fragile
    assert rows["ours"][:4] == ["2", "61.00 ± 0.00", "x3.00†", "x3.00†"]
    # naive has seed 0 only: compared with scratch's seed 0 alone (a_scratch 62, 99%: 61.38), which leaves
    # scratch's seed 1 out (‡); one seed has no standard error, so nothing is fragile
    assert rows["naive"][1:4] == ["59.00 ± 0.00‡", "/", "/"]
    assert rows["scratch"][2:4] == ["x1.00", "x1.00"]
    # per seed: seed 0's scratch peaks at 62 (300), which ours' seed 0 (at most 61) never reaches, not even
    # 99% (61.38); seed 1's scratch reaches 60 and 59.4 at 200, ours' seed 1 at 100: x2.00 from 1 of 2 seeds
    assert rows["ours"][4:6] == ["x2.00 ± 0.00 (1/2)", "x2.00 ± 0.00 (1/2)"]
    assert rows["naive"][4:6] == ["/", "/"]
    assert md.read_text() == out and "†" in out.splitlines()[-2] and "per seed" in out.splitlines()[-1]
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("label,n,left_out,max_acc") and any(x.startswith('"ours",2,0,61,0,') for x in lines)


def test_max_acc_and_the_l100_verdict_agree(tmp_path):
    # per-seed maxima would average to 61 for 'jumpy' (62 and 60 at different iterations) and to 60.5 for
    # scratch; its mean curve never exceeds 60 while scratch's peaks at 60.5: both Max Acc and L100 say 'below'
    groups = {"scratch": [(seed(0), evals([10, 40, 60, 61, 60])), (seed(1), evals([10, 40, 60, 60, 60]))],
              "jumpy": [(seed(0), evals([10, 62, 58, 58, 58])), (seed(1), evals([10, 58, 60, 62, 58]))]}
    row = row_stats(groups, "jumpy", "scratch")
    ref = row_stats(groups, "scratch", "scratch")
    assert ref["max_acc"] == ref["a_scratch"] == 60.5
    assert row["max_acc"] == 60 and row["L100"] is None  # (62+58)/2 = (58+62)/2 = 60 < 60.5
    assert not ref["L100_fragile"]


def seed(k):
    return {"config": {"seed": k, "split_seed": k}}


def test_rows_are_compared_on_the_seeds_both_have():
    # scratch: seed 0 peaks at 60 (300), seed 1 at 80 (400); their mean 10 30 40 50 70 peaks at 70 (400).
    # 'one' has seed 0 only: against seed 0's scratch (60 at 300) it reaches 60 at 100, L100 = 3; against the
    # two-seed mean it would never reach 70
    groups = {"scratch": [(seed(0), evals([10, 40, 50, 60, 60])), (seed(1), evals([10, 20, 30, 40, 80]))],
              "one": [(seed(0), evals([10, 60, 60, 60, 60]))]}
    row = row_stats(groups, "one", "scratch")
    assert row["a_scratch"] == 60 and row["L100"] == 3.0 and row["n"] == 1
    assert row["left_out"] == 1 and row["L100_seeds"] == 3.0 and row["L100_seeds_reached"] == 1
    assert row_stats(groups, "scratch", "scratch")["left_out"] == 0


def test_per_seed_speedups_are_the_mean_and_standard_error_of_each_seeds_own():
    # seed 0: scratch 60 at 300, fast at 100 (x3); seed 1: scratch 60 at 400, fast at 200 (x2); seed 2: scratch
    # 70, fast never above 65. The seed-averaged curves say something else: scratch's mean (0 10 20 40 63.33)
    # peaks at 63.33 (400), fast's mean (0 53.33 61.67 68.33 68.33) first reaches it at 300 -> x1.33
    groups = {"scratch": [(seed(0), evals([0, 10, 20, 60, 60])), (seed(1), evals([0, 10, 20, 30, 60])),
                          (seed(2), evals([0, 10, 20, 30, 70]))],
              "fast": [(seed(0), evals([0, 60, 60, 70, 70])), (seed(1), evals([0, 50, 60, 70, 70])),
                       (seed(2), evals([0, 50, 65, 65, 65]))]}
    row = row_stats(groups, "fast", "scratch")
    assert row["L100"] == 400 / 300 and row["L100_seeds_reached"] == 2
    assert row["L100_seeds"] == 2.5 and row["L100_seeds_se"] == pytest.approx(0.5)  # std(3, 2) = 0.707 / sqrt 2


def evals(accs):
    return [{"iter": i, "acc": a, "train_seconds": i} for i, a in zip(IT, accs)]


def test_target_final_uses_the_last_accuracy():
    ref, fast = [10, 40, 55, 60, 58], [30, 59.5, 61, 62, 62]
    assert speedup(IT, ref, IT, fast, 100) == 300 / 200  # max: 60, at 300 (reference), 200 (fast)
    assert speedup(IT, ref, IT, fast, 100, target="final") == 300 / 100  # final: 58, at 300 and 100



def test_cli_target_final(tmp_path, capsys):
    """--target final on the command line: a_scratch is the reference's last accuracy (58), not its maximum (60)."""
    runs = [write_run(tmp_path / f"s{k}", "scratch", k, [10, 40, 55, 60, 58]) for k in (0, 1)]
    runs += [write_run(tmp_path / f"o{k}", "ours", k, [30, 59.5, 61, 62, 62]) for k in (0, 1)]

    def ours_row(*flags):
        assert main(runs + ["--reference", "scratch", *flags]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| ours |"))
        return [c.strip() for c in row.split("|")[2:-1]]

    # max: 60 at 300 (scratch) and 200 (ours); 59.4 at 300 and 100; seconds are iterations / 100 here
    # (both seeds alike: per seed the same, with no spread)
    assert ours_row()[2:] == ["x3.00", "x1.50", "x3.00 ± 0.00", "x1.50 ± 0.00", "x3.00", "x1.50"]
    # final: 58 (57.42) at 300 (scratch) and at 100 (ours, 59.5)
    assert ours_row("--target", "final")[2:] == ["x3.00", "x3.00", "x3.00 ± 0.00", "x3.00 ± 0.00", "x3.00", "x3.00"]

def test_cli_refuses_mixed_configs_and_missing_reference(tmp_path, capsys):
    a = write_run(tmp_path / "a", "ours", 0, [1, 2, 3, 4, 5], group={"lr": 1})
    b = write_run(tmp_path / "b", "ours", 1, [1, 2, 3, 4, 5], group={"lr": 2})
    assert main([a, b, "--reference", "ours"]) == 2
    assert "differ in configuration" in capsys.readouterr().err
    assert main([a, "--reference", "scratch"]) == 2
    assert "reference 'scratch' not among" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--reference", "x"]) == 2
    assert "cannot read log" in capsys.readouterr().err


def test_replace_atomic_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_text("finished run")

    def half_written(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # killed mid-write

    try:
        replace_atomic(str(path), half_written)
    except KeyboardInterrupt:
        pass
    assert path.read_text() == "finished run" and sorted(os.listdir(tmp_path)) == ["ckpt.pt"]
    replace_atomic(str(path), lambda tmp: open(tmp, "w").close())
    assert path.read_text() == "" and sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_replace_atomic_names_the_file_asked_for_and_leaves_another_files_error_alone(tmp_path):
    """A failed write into the temporary file names the file asked for; a source that is missing (copied into
    it) is named itself, not blamed on the file being written."""
    import errno
    import shutil

    path = str(tmp_path / "table.prev.md")

    def full_disk(tmp):
        open(tmp, "w").close()
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError) as e:
        replace_atomic(path, full_disk)
    assert e.value.filename == path and e.value.errno == errno.ENOSPC
    missing = str(tmp_path / "table.md")
    with pytest.raises(FileNotFoundError) as e:
        replace_atomic(path, lambda tmp: shutil.copyfile(missing, tmp))
    assert e.value.filename == missing and os.listdir(tmp_path) == []


def test_csv_line_round_trips_through_the_csv_module():
    import csv

    values = ['Ours (x0.5), "held"', None, True, 3910000, 1 / 3, 2.0]
    line = csv_line(values)
    # by hand: the string quoted with its quotes doubled, None empty, True as 1, the integer in full (not
    # 3.91e+06), floats to 6 significant digits
    assert line == '"Ours (x0.5), ""held""",,1,3910000,0.333333,2'
    assert next(csv.reader([line])) == ['Ours (x0.5), "held"', "", "1", "3910000", "0.333333", "2"]
