"""L99 / L100 (paper Eq. 1-2, speedup.py) of any train.py run folders, as a table: each label a row, its seeds
averaged, every row against the reference's runs.

    python -m repro.table runs/*/ --reference scratch [--target max|final] [--md table.md] [--csv table.csv]

The logs are read and grouped by repro/runs.py's group_runs (it refuses runs that would mix configurations, data or
copies of one run); the numbers are speedup.row_stats, the same as the plans' tables (report.py).
"""
import os
import sys

import runlog
import speedup as S

from .runs import group_runs


def main(argv=None):
    p = runlog.OneLineParser(prog="python -m repro.table",
                             description="L99/L100 speed-ups (paper Eq. 1-2) from train.py run folders.")
    p.add_argument("runs", nargs="+", help="run folders (each holding log.jsonl) or log files")
    p.add_argument("--reference", required=True, help="label of the reference runs (e.g. scratch)")
    p.add_argument("--target", default="max", choices=["max", "final"],
                   help="a_scratch of Eq. 2: the reference's maximum or its final accuracy")
    p.add_argument("--md", help="also write the table as Markdown to this file")
    p.add_argument("--csv", help="also write the table as CSV to this file")
    args = p.parse_args(argv)
    try:
        for flag, path in (("--md", args.md), ("--csv", args.csv)):  # before the work, not after the table
            folder = os.path.dirname(os.path.abspath(path)) if path else None
            if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                raise ValueError(f"{flag} {path}: folder {folder} does not exist or is not writable")
        warn = lambda m: print(f"{p.prog}: warning: {m}", file=sys.stderr)  # noqa: E731
        groups = group_runs(args.runs, warn=warn)
        if args.reference not in groups:
            raise ValueError(f"reference '{args.reference}' not among the runs ({', '.join(sorted(groups))})")
        rows = {label: S.row_stats(groups, label, args.reference, target=args.target) for label in groups}
        for label in [label for label, row in rows.items() if row is None]:  # Eq. 2 pairs seeds: none to pair
            warn(f"'{label}' has no seed in common with '{args.reference}'; left out")
        rows = [row for row in rows.values() if row is not None]
        md = S.to_markdown(rows) + S.FRAGILE_NOTE + S.SEEDS_NOTE
        for path, text in ((args.md, md), (args.csv, S.to_csv(rows) if args.csv else None)):
            if path:
                runlog.write_atomic(path, text)
    except (ValueError, KeyError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
