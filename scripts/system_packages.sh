#!/usr/bin/env bash
# Install the Debian packages the tests need when a file they provide is missing.
#
# Usage: scripts/system_packages.sh CHECK_PATH:PACKAGE [CHECK_PATH:PACKAGE ...]
#   e.g.   scripts/system_packages.sh /usr/lib/postgresql/15/bin/initdb:postgresql-15
# A pair whose CHECK_PATH exists needs nothing. As root, the missing packages are installed with
# apt-get; otherwise the exact command is printed and the script carries on (the tests that need them
# then skip, or fail under CI=true). Under CI=true a failed installation is an error.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 CHECK_PATH:PACKAGE [CHECK_PATH:PACKAGE ...]" >&2
    exit 2
fi

missing_paths=()
packages=()
for pair in "$@"; do
    path=${pair%:*}
    package=${pair##*:}
    if [[ $pair != *:* || -z $path || -z $package ]]; then
        echo "$0: '$pair' is not CHECK_PATH:PACKAGE" >&2
        exit 2
    fi
    [[ -e $path ]] && continue
    missing_paths+=("$path")
    [[ " ${packages[*]-} " == *" $package "* ]] || packages+=("$package")
done
[[ ${#packages[@]} -eq 0 ]] && exit 0

# --no-upgrade: a package that is installed already (its file missing for another reason) is left as it is.
command="apt-get update && apt-get install -y --no-install-recommends --no-upgrade ${packages[*]}"
echo "system packages: missing ${missing_paths[*]} (Debian: ${packages[*]})"

# The tests decide what a missing package means: they skip, or fail under CI=true.
continue_without() {
    echo "system packages: $1" >&2
    echo "system packages: carrying on; the tests that need them skip (fail under CI=true)" >&2
    exit 0
}
# A failed installation as root stops a CI run here, where the cause is visible.
fail_or_continue() {
    if [[ ${CI:-} == true ]]; then
        echo "system packages: $1; CI=true, stopping" >&2
        exit 1
    fi
    continue_without "$1"
}

if ! command -v apt-get > /dev/null; then
    continue_without "no apt-get here: install ${packages[*]} (Debian names) with this system's package manager"
fi
if [[ $(id -u) -ne 0 ]]; then
    continue_without "not root; install them with:
    sudo sh -c '$command'"
fi

echo "system packages: $command"
if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade "${packages[@]}"; }; then
    fail_or_continue "apt-get failed"
fi
still_missing=()
for path in "${missing_paths[@]}"; do
    [[ -e $path ]] || still_missing+=("$path")
done
if [[ ${#still_missing[@]} -gt 0 ]]; then
    fail_or_continue "installed ${packages[*]}, but ${still_missing[*]} is still missing"
fi
echo "system packages: installed ${packages[*]}"
