#!/usr/bin/env bash
# Rewrite requirements/constraints.txt from pyproject.toml alone: install the project with its declared
# extras into a fresh, throwaway virtualenv and freeze that, so nothing installed by hand into .venv
# (profilers, debuggers) ends up in the lock.
#
# Usage: scripts/lock.sh PYTHON EXTRAS [--upgrade|--min]
#   PYTHON     interpreter for the throwaway venv (python3.11)
#   EXTRAS     comma-separated extras to install (the Makefile's EXTRAS, or MIN_EXTRAS with --min)
#   --upgrade  resolve without the current pins (newest versions pyproject.toml allows); by default the
#              current lock constrains the resolution, so pins only move where pyproject.toml demands it
#              and packages no longer required drop out.
#   --min      write requirements/constraints-min.txt instead: the minimum pair of requirements/min.in
#              (oldest declared Airflow and dbt-core), constrained by the current minimum lock.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 || ( $# -eq 3 && $3 != --upgrade && $3 != --min ) ]]; then
    echo "usage: $0 PYTHON EXTRAS [--upgrade|--min]" >&2
    exit 2
fi
python=$1
extras=$2
mode=${3:-}
upgrade=""
[[ $mode == --upgrade ]] && upgrade=yes

cd "$(dirname "$0")/.."
lock=requirements/constraints.txt
requirements=()
header=""
if [[ $mode == --min ]]; then
    lock=requirements/constraints-min.txt
    requirements=(-r requirements/min.in)
    # Airflow's own constraints files live on GitHub, out of reach here: pip resolves the pair from PyPI and
    # the pins of requirements/min.in hold back what an unconstrained resolution gets wrong.
    header="# make lock-min: requirements/min.in + pyproject.toml [${extras}] resolved by pip from PyPI (not
# Airflow's constraints-3.1.8 file, which is not reachable here); regenerate with make lock-min."
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dlh-lock.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

"$python" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade "pip>=23.2"
constraint=()
if [[ -z $upgrade && -s $lock ]]; then
    # A copy: pip reads it while we later overwrite the original.
    cp "$lock" "$tmp/old-constraints.txt"
    constraint=(-c "$tmp/old-constraints.txt")
fi
"${pip[@]}" install --quiet "${constraint[@]}" "${requirements[@]}" -e ".[$extras]"
"${pip[@]}" check
# pip freeze leaves out pip, setuptools and wheel; the project itself is the editable install.
{
    [[ -n $header ]] && echo "$header"
    "${pip[@]}" freeze --exclude-editable | grep -v -i '^dlh-airflow-common'
} > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" "$lock"
echo "wrote $lock ($(wc -l < "$lock") pins)"
