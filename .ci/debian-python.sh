#!/bin/bash
# Make a venv for a CPython that this machine's Debian release lacks (3.14,
# 3.15, ...), from Debian unstable's binary packages, and install the project
# into it:
#
#     bash .ci/debian-python.sh 3.15          # -> .pythons/3.15/venv/bin/python
#     .pythons/3.15/venv/bin/pytest
#
# Nothing is installed system-wide: apt runs with a private source list and
# state under .pythons/apt, the packages are unpacked under .pythons/X.Y/root,
# and the interpreter is pointed at the glibc it was built for with patchelf
# (the one system package this asks for, when missing). Needs Debian's
# package mirror and PyPI, nothing else.
set -euo pipefail

ver=${1:?usage: debian-python.sh 3.X}
here=$(cd "$(dirname "$0")/.." && pwd)
top=$here/.pythons
apt_dir=$top/apt
root=$top/$ver/root
venv=$top/$ver/venv
libdir=$root/usr/lib/x86_64-linux-gnu

mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$top/$ver/debs"
cat > "$apt_dir/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian experimental main
EOF
apt_opts=(
    -o Dir::Etc::SourceList="$apt_dir/sources.list"
    -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$apt_dir/lists"
    -o Dir::Cache::Archives="$apt_dir/archives"
    -o Dir::Cache::pkgcache="$apt_dir/pkgcache.bin"
    -o Dir::Cache::srcpkgcache="$apt_dir/srcpkgcache.bin"
    -o APT::Sandbox::User=root
    -o Debug::NoLocking=1
)
apt-get "${apt_opts[@]}" -qq update

# The interpreter, its standard library and headers, and the shared
# libraries it and its extension modules were linked against in unstable.
pkgs=(
    "python$ver-minimal" "libpython$ver-minimal" "libpython$ver-stdlib" "python$ver"
    "libpython$ver" "libpython$ver-dev" "python$ver-dev"
    libc6/sid libexpat1/sid zlib1g/sid libffi8/sid libssl3t64/sid libmpdec4/sid libzstd1/sid
    liblzma5/sid libbz2-1.0/sid libsqlite3-0/sid libuuid1/sid
)
(cd "$top/$ver/debs" && apt-get "${apt_opts[@]}" -qq download "${pkgs[@]}")
rm -rf "$root"
for deb in "$top/$ver/debs"/*.deb; do
    dpkg -x "$deb" "$root"
done

command -v patchelf >/dev/null || apt-get install -y -qq patchelf
python=$root/usr/bin/python$ver
patchelf --set-interpreter "$libdir/ld-linux-x86-64.so.2" \
    --force-rpath --set-rpath "$libdir:$root/usr/lib" "$python"
# Debian's pyconfig.h includes the multiarch one by a path relative to /usr/include.
sed -i "s#<x86_64-linux-gnu/python$ver/pyconfig.h>#\"$root/usr/include/x86_64-linux-gnu/python$ver/pyconfig.h\"#" \
    "$root/usr/include/python$ver/pyconfig.h"

rm -rf "$venv"
"$python" -m venv --without-pip "$venv"
# Debian's ensurepip wheel is too old for a new interpreter: run the newest
# pip wheel from PyPI directly to install itself.
rm -rf "$top/pip-wheel" && python3 -m pip download -q --no-deps -d "$top/pip-wheel" pip
wheel=$(echo "$top"/pip-wheel/pip-*.whl)
"$venv/bin/python" "$wheel/pip" install -q --no-index "$wheel"
"$venv/bin/python" -m pip install -q -e "$here[test]"
"$venv/bin/python" -c "import sys, greenback_loop; print(sys.version.split()[0], greenback_loop.implementation)"
