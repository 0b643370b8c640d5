#!/usr/bin/env bash
# Install ferry: the binary, the ONNX Runtime library it loads, and debootstrap (used to build
# base images where none can be pulled).
#
# Usage: ./install.sh [--prefix DIR]
#   PREFIX (environment) or --prefix sets where things go; default: $HOME/.local
#   ->  DIR/bin/ferry, DIR/bin/ferry-serve  and  DIR/lib/ferry/libonnxruntime.so
#   FERRY_ORT_VERSION (environment) picks another ONNX Runtime version than the pinned one.
# Running it again updates what changed and skips the rest.
set -euo pipefail

step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

PREFIX=${PREFIX:-${HOME:?HOME is not set; pass --prefix DIR}/.local}
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix)
        [ $# -ge 2 ] || die "--prefix needs a directory"
        PREFIX=$2
        shift 2
        ;;
    --prefix=*)
        PREFIX=${1#--prefix=}
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument '$1'"
        ;;
    esac
done
[ -n "$PREFIX" ] || die "the prefix is empty"
case "$PREFIX" in
/*) ;;
*) PREFIX="$PWD/$PREFIX" ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN_DIR="$PREFIX/bin"
LIB_DIR="$PREFIX/lib/ferry"

step "Building and installing ferry and ferry-serve into $BIN_DIR"
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found; install Rust (rustup is the usual way), then run this again"
# --locked builds exactly the dependency versions that were tested. Both binaries come out of
# one build: `ferry`, and `ferry-serve`, the model server alone that serving images carry (the
# linker keeps only what the server reaches, a tenth of the size).
cargo install --path "$REPO" --root "$PREFIX" --locked
# An older install kept the server-only binary here; the one beside ferry is found first now.
rm -f "$LIB_DIR/ferry-serve"
say "$(du -h "$BIN_DIR/ferry-serve" | cut -f1) server-only binary"

step "Installing ONNX Runtime into $LIB_DIR"
bash "$REPO/scripts/fetch-onnxruntime.sh" "$LIB_DIR" ${FERRY_ORT_VERSION:+"$FERRY_ORT_VERSION"}

step "Checking for debootstrap (builds base images when none can be pulled)"
have_debootstrap() {
    # It lives in /usr/sbin, which is often not on an unprivileged user's PATH.
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || [ -x /sbin/debootstrap ]
}
apt_install_debootstrap() {
    local -a as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        as_root=(sudo -n)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have empty package lists; update only when the first try fails.
    "${as_root[@]}" apt-get install -y --no-install-recommends debootstrap ||
        { "${as_root[@]}" apt-get update && "${as_root[@]}" apt-get install -y --no-install-recommends debootstrap; }
}
DEBOOTSTRAP_HINT="install it with: sudo apt-get install debootstrap (ferry needs it only for offline base images)"
if have_debootstrap; then
    say "debootstrap is installed"
elif ! command -v apt-get >/dev/null 2>&1; then
    warn "debootstrap is missing and this system has no apt-get; install debootstrap with your package manager (ferry needs it only for offline base images)"
elif [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; then
    say "installing debootstrap with apt-get"
    apt_install_debootstrap || warn "apt-get could not install debootstrap; $DEBOOTSTRAP_HINT"
else
    warn "debootstrap is missing and installing it needs root; $DEBOOTSTRAP_HINT"
fi

# uv resolves environments on the host; without it pip does, several times slower.
if command -v uv >/dev/null 2>&1; then
    say "uv is installed ($(uv --version 2>/dev/null))"
else
    warn "uv is not on PATH: pip will resolve environments, several times slower, and pyproject.toml or uv.lock requirement sources cannot be read; install it with: pip install uv"
fi

step "Done in ${SECONDS}s"
say "ferry:        $BIN_DIR/ferry"
for lib in "$LIB_DIR"/libonnxruntime.so "$LIB_DIR"/libonnxruntime.dylib; do
    if [ -e "$lib" ]; then
        say "ONNX Runtime: $lib -> $(readlink "$lib")"
    fi
done
case ":$PATH:" in
*":$BIN_DIR:"*) ;;
*)
    say ""
    say "$BIN_DIR is not on your PATH. Add it, e.g. in ~/.bashrc or ~/.profile:"
    say "    export PATH=\"$BIN_DIR:\$PATH\""
    ;;
esac
