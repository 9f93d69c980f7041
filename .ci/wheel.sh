#!/usr/bin/env bash
# The distributions as users get them: an sdist (checked to hold every file
# git tracks), a wheel built from that sdist, and a pure-Python wheel
# (GREENBACK_LOOP_NO_EXTENSIONS=1). Each wheel goes into a fresh venv and a
# quick subset of the tests runs against it from a folder holding no package
# source, so a file missing from the sdist or the wheel fails here.
#
#     bash .ci/wheel.sh            # PYTHON=... to build with another venv
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
py=${PYTHON:-$here/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m pip install -q build
"$py" -m build -q --sdist --outdir "$work/dist" .
sdist=$(echo "$work"/dist/*.tar.gz)
missing=$(comm -13 <(tar tzf "$sdist" | sed 's#^[^/]*/##' | sort) \
                   <(git ls-files | grep -vx '.gitignore' | sort))
if [[ -n $missing ]]; then
    echo "*** the sdist lacks files git tracks:" >&2
    echo "$missing" >&2
    exit 1
fi
"$py" -m pip wheel -q --no-deps -w "$work/c" "$sdist"
GREENBACK_LOOP_NO_EXTENSIONS=1 "$py" -m pip wheel -q --no-deps -w "$work/pure" "$sdist"

QUICK=(tests/test_await.py tests/test_errors.py tests/test_trio.py tests/test_project.py::test_c_core_stub_matches_the_module)
for kind in c pure; do
    wheel=$(echo "$work/$kind"/*.whl)
    echo "=== $(basename "$wheel")"
    case $kind in
    c) [[ $wheel != *-none-any.whl ]] || { echo "*** the C wheel is pure" >&2; exit 1; } ;;
    pure) [[ $wheel == *-py3-none-any.whl ]] || { echo "*** not a pure wheel" >&2; exit 1; } ;;
    esac
    python3 -m venv "$work/venv-$kind"
    "$work/venv-$kind/bin/pip" install -q "$wheel[test]"
    mkdir "$work/run-$kind"
    cp -r tests pyproject.toml "$work/run-$kind/"
    (
        cd "$work/run-$kind"
        env -u GREENBACK_LOOP_NO_EXTENSIONS "$work/venv-$kind/bin/python" -c "
import sys, greenback_loop
assert greenback_loop.__file__.startswith(sys.prefix), greenback_loop.__file__
want = {'c': 'c', 'pure': 'python'}['$kind']
assert greenback_loop.implementation == want, greenback_loop.implementation
print('installed', greenback_loop.__version__, 'core', greenback_loop.implementation)"
        env -u GREENBACK_LOOP_NO_EXTENSIONS "$work/venv-$kind/bin/python" -m pytest -q \
            -p no:cacheprovider "${QUICK[@]}"
    )
done
