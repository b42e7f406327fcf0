#!/usr/bin/env bash
# `make test`: the unit and integration tiers in parallel pytest workers (pytest-xdist), then the deployment tier
# alone (its real Airflow services start one deployment at a time and are timing-sensitive). Both phases always
# run; the exit status is the first failing phase's. "No tests collected" (5) is fine: a path given in
# PYTEST_ARGS may select tests of one phase only.
#
# Usage: scripts/run_tests.sh PYTHON WORKERS [pytest arguments...]   (e.g. -m "not postgres" tests/unit)
set -uo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 PYTHON WORKERS [pytest arguments...]" >&2
    exit 2
fi
python=$1
workers=$2
shift 2
status=0

phase() {
    "$python" -m pytest "$@"
    local rc=$?
    if [[ $rc -ne 0 && $rc -ne 5 && $status -eq 0 ]]; then
        status=$rc
    fi
}

# A marker expression of the caller's (-m EXPR) narrows each phase instead of replacing the phase's own.
marker=""
args=()
while [[ $# -gt 0 ]]; do
    if [[ $1 == -m && $# -gt 1 ]]; then
        marker=$2
        shift 2
    else
        args+=("$1")
        shift
    fi
done
narrowed() { if [[ -n $marker ]]; then echo "($marker) and ($1)"; else echo "$1"; fi; }

started=$SECONDS
phase -n "$workers" --dist worksteal -m "$(narrowed "not deployment")" "${args[@]}"
echo "make test: unit and integration tiers took $((SECONDS - started)) s with $workers workers"
started=$SECONDS
phase -m "$(narrowed deployment)" "${args[@]}"
echo "make test: deployment tier took $((SECONDS - started)) s"
exit $status
