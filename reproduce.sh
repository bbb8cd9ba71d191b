#!/usr/bin/env bash
# Regenerate the paper's tables and figures: ./reproduce.sh --help
set -euo pipefail
# The driver is the package repro/ beside this script; PYTHONPATH lets `python -m` find it (and train.py, data.py,
# ... which it imports) from any working directory, so relative paths in the arguments keep their meaning.
export PYTHONPATH="$(cd "$(dirname "$0")" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec python -m repro.reproduce "$@"
