#!/usr/bin/env bash
# Regenerate the paper's tables and figures: ./reproduce.sh --help
set -euo pipefail
exec python "$(dirname "$0")/reproduce.py" "$@"
