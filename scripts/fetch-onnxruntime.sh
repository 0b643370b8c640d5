#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library that ferry loads at run time.
#
# Usage: scripts/fetch-onnxruntime.sh DEST_DIR [VERSION]
#
# The library is taken from the official `onnxruntime` Python wheel, fetched with pip from its
# configured index, so this works wherever pip works (mirrors and proxies included). DEST_DIR ends
# up holding the versioned library plus `libonnxruntime.so` (and the SONAME link
# `libonnxruntime.so.1`) pointing at it. Running it again with the same version does nothing.
set -euo pipefail

# ort 2.0.0-rc.15 targets ONNX Runtime 1.31 and needs at least 1.17; 1.32.0 is the newest release
# checked against it (model loading and inference).
DEFAULT_VERSION="1.32.0"
MIN_MINOR=17

say() { printf 'fetch-onnxruntime: %s\n' "$*"; }
die() {
    printf 'fetch-onnxruntime: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
Usage: $(basename "$0") DEST_DIR [VERSION]

Downloads the onnxruntime wheel (default version ${DEFAULT_VERSION}) with pip, extracts
ONNX Runtime's shared library into DEST_DIR and links libonnxruntime.so to it.
Environment: PYTHON (default python3) selects the interpreter whose pip is used.
EOF
}

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
"")
    usage >&2
    exit 2
    ;;
esac
[ $# -le 2 ] || {
    usage >&2
    exit 2
}

DEST=$1
VERSION=${2:-$DEFAULT_VERSION}

[[ $VERSION =~ ^1\.([0-9]+)\.([0-9]+)$ ]] || die "VERSION must look like 1.MINOR.PATCH, got '$VERSION'"
if ((BASH_REMATCH[1] < MIN_MINOR)); then
    die "ONNX Runtime $VERSION is too old for ferry; use 1.$MIN_MINOR.0 or newer"
fi

case "$(uname -s)" in
Linux)
    LIB_FILE="libonnxruntime.so.$VERSION"
    LINKS=(libonnxruntime.so libonnxruntime.so.1)
    ;;
Darwin)
    LIB_FILE="libonnxruntime.$VERSION.dylib"
    LINKS=(libonnxruntime.dylib)
    ;;
*) die "unsupported operating system '$(uname -s)'; ferry needs Linux or macOS" ;;
esac

up_to_date() {
    [ -f "$DEST/$LIB_FILE" ] || return 1
    local link
    for link in "${LINKS[@]}"; do
        [ "$(readlink "$DEST/$link" 2>/dev/null || true)" = "$LIB_FILE" ] || return 1
    done
}

if up_to_date; then
    say "ONNX Runtime $VERSION is already in $DEST; nothing to do"
    exit 0
fi

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 ||
    die "'$PYTHON' not found; install Python 3 with pip (e.g. 'apt-get install python3 python3-pip')"
"$PYTHON" -m pip --version >/dev/null 2>&1 ||
    die "pip is not available for '$PYTHON'; install it (e.g. 'apt-get install python3-pip' or '$PYTHON -m ensurepip --upgrade')"

mkdir -p "$DEST" || die "cannot create $DEST"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-onnxruntime.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

say "downloading the onnxruntime $VERSION wheel with pip"
# The shared library inside the wheel does not depend on the Python version, so ask for a fixed
# one: the host's own Python may be too new or too old to have a wheel for this release.
if ! "$PYTHON" -m pip download "onnxruntime==$VERSION" --no-deps --only-binary=:all: \
    --implementation cp --python-version 3.11 --disable-pip-version-check -d "$TMP/wheel"; then
    die "pip could not download onnxruntime==$VERSION (check the network, pip's index configuration, and that this version exists for your platform)"
fi

say "extracting $LIB_FILE into $DEST"
"$PYTHON" - "$TMP/wheel" "$LIB_FILE" "$DEST" <<'PY' || die "could not extract $LIB_FILE from the wheel"
import os
import shutil
import sys
import zipfile
from pathlib import Path

wheel_dir, lib_file, dest = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
wheels = sorted(wheel_dir.glob("onnxruntime-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one onnxruntime wheel in {wheel_dir}, found {len(wheels)}")
member = f"onnxruntime/capi/{lib_file}"
with zipfile.ZipFile(wheels[0]) as wheel:
    if member not in wheel.namelist():
        sys.exit(f"{wheels[0].name} has no {member}")
    # Write next to the final name and rename, so an interrupted run never leaves a truncated
    # library where ferry would load it.
    partial = dest / f".{lib_file}.partial"
    with wheel.open(member) as src, open(partial, "wb") as out:
        shutil.copyfileobj(src, out)
os.chmod(partial, 0o755)
os.replace(partial, dest / lib_file)
PY

for link in "${LINKS[@]}"; do
    say "linking $link -> $LIB_FILE"
    ln -sfn "$LIB_FILE" "$DEST/$link"
done

# Other versions left behind would only be confusing: ferry loads whatever the links name.
shopt -s nullglob
for old in "$DEST"/libonnxruntime.so.1.*.* "$DEST"/libonnxruntime.1.*.*.dylib; do
    if [ "$(basename "$old")" != "$LIB_FILE" ] && [ ! -L "$old" ]; then
        say "removing the previous version $(basename "$old")"
        rm -f "$old"
    fi
done

say "ONNX Runtime $VERSION is ready: $DEST/${LINKS[0]}"
