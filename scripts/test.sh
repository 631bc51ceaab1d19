#!/usr/bin/env bash
# The test command (README.md): sets up everything, then lint, types and the test suite.
#   scripts/test.sh           everything: what CI runs
#   scripts/test.sh --quick   the same lint, then the fast tier only (-m "not slow"): the
#                             edit-test loop, under 3 minutes on 2 cores
# Other arguments go to pytest, e.g. scripts/test.sh -k audit
set -euo pipefail
cd "$(dirname "$0")/.."
tier=()
if [ "${1:-}" = --quick ]; then
  tier=(-m "not slow")
  shift
fi
scripts/setup.sh
VENV=${EDGEHOOK_VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"
# The parts' import rules (pyproject.toml [tool.importlinter], docs/architecture.md).
"$VENV/bin/lint-imports" --no-cache
# Security lint: no medium or high finding may stand unexplained (explained ones carry a
# `nosec <id>` comment saying why).
"$VENV/bin/bandit" -q -r edgehook core receiver pipeline console scripts -ll
# The project's bytecode, once: where PYTHONDONTWRITEBYTECODE is set (as on CI machines)
# every CLI process the tests start would compile its modules again (1.3 s of a 3.4 s
# import of the training code).
"$VENV/bin/python" -m compileall -q -j 0 edgehook core receiver pipeline console tests \
  benchmarks scripts >/dev/null
# One torch thread a process: the tests run a process beside pytest, and two OpenMP threads
# each on 2 cores contend (the retrain and worker-kill tests: 149 s -> 130 s).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$VENV/bin/python" -m pytest ${tier[@]+"${tier[@]}"} "$@"
