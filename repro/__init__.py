"""The driver behind ./reproduce.sh: plans of train.py runs (plans.py), run resumably and in parallel
(reproduce.py), turned into the paper's tables and figures from the logs only (report.py, report_analysis.py;
runs.py groups the runs into rows over seeds), the table of any run folders (table.py), and the speed benchmark
(bench.py). Run from the repository root as `python -m repro.reproduce`, `python -m repro.table` or
`python -m repro.bench`. Nothing outside this folder imports it: train.py and the method modules stand alone."""
