"""docs/reproducing.md's "Your own data": its exact commands, end to end, on a tiny synthetic image folder
(10 classes, width 8, a few iterations), and the resulting table checked against the runs' logs, recomputed
independently."""
import csv
import json
import os
import re
import shlex

import pytest

import train
from repro import table
from conftest import ROOT, curves, independent_max_acc, independent_speedup, write_folder

TINY = ["--width", "8", "--iters", "12", "--eval-every", "3", "--batch-size", "16", "--quiet", "--device", "cpu"]


def readme_commands(block=0):
    """The commands of the section's bash block number `block`, continuation lines joined, as argument lists."""
    text = open(os.path.join(ROOT, "docs", "reproducing.md")).read()
    section = text.split("## Your own data\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[block].replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_commands_for_your_own_data(tmp_path, monkeypatch, capsys):
    cmds = readme_commands()
    assert [c[:2] for c in cmds[:4]] == [["python", "train.py"]] * 4
    assert cmds[4][:3] == ["python", "-m", "repro.table"]
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "my_images", num_classes=10, n_train=8, n_test=4)
    for cmd in cmds[:4]:  # the page's flags as written; only the size of the run is shrunk
        assert train.cli(cmd[2:] + TINY) == 0, cmd
    assert table.main(cmds[4][3:]) == 0
    out = capsys.readouterr().out
    runs = tmp_path / "runs" / "mine"
    headers = {n: json.loads(open(runs / n / "log.jsonl").readline()) for n in ("old", "naive", "ours", "scratch")}
    # what the page says each run is
    assert headers["old"]["num_classes"] == 8 and headers["scratch"]["num_classes"] == 10
    assert headers["naive"]["config"]["init"] == "old" and headers["scratch"]["config"]["init"] == "scratch"
    ours = headers["ours"]["config"]
    assert (ours["init"], ours["reg"], ours["sampler"], ours["schedule_scale"]) == \
        ("shrink_perturb", "l2init", "easy_hard", 0.5)
    assert curves(runs / "ours")[-1]["iter"] == 6  # x0.5 of 12 iterations
    assert len({json.dumps(h["class_order"]) for h in headers.values()}) == 1
    # the table against the logs: one row per label, Max Acc and L99 / L100 recomputed independently
    rows = list(csv.DictReader(open(runs / "table.csv")))
    labels = {"naive": "continuous", "ours": "shrink_perturb + l2init + easy_hard + x0.5", "scratch": "scratch"}
    assert sorted(r["label"] for r in rows) == sorted(labels.values())
    ref = [curves(runs / "scratch")]
    for name, label in labels.items():
        row = next(r for r in rows if r["label"] == label)
        cur = [curves(runs / name)]
        assert float(row["max_acc"]) == pytest.approx(independent_max_acc(cur)[0], abs=1e-4)
        for r in (99, 100):
            want = independent_speedup(ref, cur, r)
            assert (row[f"L{r}"] == "") if want is None else float(row[f"L{r}"]) == pytest.approx(want), (label, r)
    assert float(next(r for r in rows if r["label"] == "scratch")["L100"]) == 1.0
    md = (runs / "table.md").read_text()
    assert md.startswith(out.splitlines()[0]) and all(f"| {lab} |" in md for lab in labels.values())


def test_readme_commands_for_a_new_domain(tmp_path, monkeypatch, capsys):
    from test_domains import write_domains

    cmds = readme_commands(1)
    assert [c[:2] for c in cmds[:4]] == [["python", "train.py"]] * 4
    assert cmds[4][:3] == ["python", "-m", "repro.table"]
    monkeypatch.chdir(tmp_path)
    domains = cmds[0][cmds[0].index("--split") + 1].split("+")
    write_domains(tmp_path / "my_domains", num_classes=3, n=10, size=32, names=domains)
    for cmd in cmds[:4]:
        assert train.cli(cmd[2:] + TINY) == 0, cmd
    assert table.main(cmds[4][3:]) == 0
    runs = tmp_path / "runs" / "dom"
    headers = {n: json.loads(open(runs / n / "log.jsonl").readline()) for n in ("old", "naive", "ours", "scratch")}
    assert {h["num_classes"] for h in headers.values()} == {3}  # the head does not grow: no class is new
    last = curves(runs / "ours")[-1]
    assert set(last["acc_domain"]) == set(domains)
    # all-domain accuracy: the test-size-weighted mean of the two domains' (2 of 10 images per class each)
    assert last["acc"] == pytest.approx((last["acc_domain"][domains[0]] + last["acc_domain"][domains[1]]) / 2)
    rows = list(csv.DictReader(open(runs / "table.csv")))
    ref = [curves(runs / "scratch")]
    for name, label in {"naive": "continuous", "scratch": "scratch"}.items():
        row = next(r for r in rows if r["label"] == label)
        want = independent_speedup(ref, [curves(runs / name)], 100)
        assert (row["L100"] == "") if want is None else float(row["L100"]) == pytest.approx(want)
