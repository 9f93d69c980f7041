#!/usr/bin/env bash
# The suite on other CPythons, each in a venv of its own under .pythons/X.Y:
# pyenv's 3.12 and 3.13 (they ship on these machines), 3.14 and 3.15 from
# Debian's packages (.ci/debian-python.sh).
#
#     bash .ci/versions.sh [--fast] [3.12 3.13 3.14 3.15]
#     bash .ci/versions.sh --newest
#     bash .ci/versions.sh --newest --venv-only   # make it, say which (.pythons/newest)
#     bash .ci/versions.sh --reuse 3.15           # its tests, in the venv made before
#     bash .ci/versions.sh --sanitize-fast 3.15   # the whole suite, its ASan rerun FAST only
#
# --fast runs the quick subset (FAST below: await_, portals, tasks, Trio,
# every library, the project checks) instead of the whole suite. Exits non-zero
# on the first version whose venv cannot be made or whose tests fail.
# --available skips (saying so) a version whose venv cannot be made, instead
# of failing; test failures still fail. --newest runs the whole suite on the newest of 3.15, 3.14, 3.13 and 3.12
# whose venv can be made here (Debian's packages may be out of reach; pyenv's
# are on the machine), saying which ones it could not make. --venv-only makes
# the venvs and runs no tests (.ci/run makes the newest one while the 3.11
# suite runs); --reuse runs the tests in a venv made before, if there is one.
# --sanitize-fast runs the whole suite but limits its rerun against the
# ASan+UBSan build (tests/test_sanitizers.py) to FAST: .ci/run's second
# CPython, the whole suite being rerun under the sanitizers on 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

FAST=(tests/test_await.py tests/test_portal.py tests/test_tasks.py tests/test_cancel.py
      tests/test_trio.py tests/test_any_library.py tests/test_errors.py tests/test_project.py)
fast=0 newest=0 available=0 venv_only=0 reuse=0 sanitize_fast=0
while [[ ${1:-} == --* ]]; do
    case $1 in
    --fast) fast=1 ;;
    --newest) newest=1 ;;
    --available) available=1 ;;
    --venv-only) venv_only=1 ;;
    --reuse) reuse=1 ;;
    --sanitize-fast) sanitize_fast=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
versions=("$@")
[[ ${#versions[@]} -gt 0 ]] || versions=(3.12 3.13 3.14 3.15)

make_venv() {  # make_venv X.Y: .pythons/X.Y/venv with the project installed
    local ver=$1 venv=.pythons/$1/venv
    local pyenv_ver
    pyenv_ver=$(pyenv versions --bare 2>/dev/null | grep -E "^${ver//./\\.}\.[0-9]+$" | tail -1 || true)
    if [[ -n $pyenv_ver ]]; then
        # (chained: under `if make_venv` errexit is off)
        rm -rf "$venv" && "$(pyenv prefix "$pyenv_ver")/bin/python" -m venv "$venv" &&
            "$venv/bin/pip" install -q -e '.[test]'
    else
        bash .ci/debian-python.sh "$ver"
    fi
}

if [[ $newest == 1 ]]; then
    for ver in 3.15 3.14 3.13 3.12; do
        if make_venv "$ver"; then
            versions=("$ver")
            echo "$ver" > .pythons/newest
            break
        fi
        echo "*** could not make a CPython $ver venv here; trying the next older" >&2
        versions=()
    done
    [[ ${#versions[@]} -gt 0 ]] || { echo "*** no CPython newer than 3.11 available" >&2; exit 1; }
fi

for ver in "${versions[@]}"; do
    echo "=== CPython $ver"
    if [[ $reuse == 1 && -x .pythons/$ver/venv/bin/python ]]; then
        : # made before (--venv-only)
    elif [[ $newest == 0 ]] && ! make_venv "$ver"; then
        if [[ $available == 1 ]]; then
            echo "*** skipped CPython $ver: no venv could be made here" >&2
            continue
        fi
        exit 1
    fi
    [[ $venv_only == 0 ]] || continue
    py=.pythons/$ver/venv/bin/python
    "$py" -c "import sys, greenback_loop; print(sys.version.split()[0], 'core', greenback_loop.implementation)"
    if [[ $fast == 1 ]]; then
        "$py" -m pytest -q -p no:cacheprovider "${FAST[@]}"
    elif [[ $sanitize_fast == 1 ]]; then
        GREENBACK_LOOP_SANITIZED_TESTS="${FAST[*]}" "$py" -m pytest -q -p no:cacheprovider
    else
        "$py" -m pytest -q -p no:cacheprovider
    fi
done
