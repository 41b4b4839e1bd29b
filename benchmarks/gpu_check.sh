#!/usr/bin/env bash
# The one command on a GPU machine: unpack the carried .gpu/site.tar.xz, run the main job, `pytest -m gpu` and the
# GPU benchmarks within 8 minutes, print one table (benchmarks/gpu_check.py; its --help lists the options).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py run "$@"
