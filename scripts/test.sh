#!/usr/bin/env bash
# The test command: installs what the test suite needs on a fresh machine (Rust, Python 3 with
# pip and a Docker engine must be there already), then runs `cargo test --locked`. Arguments are
# passed on to cargo test (`scripts/test.sh --test docker_local`). Running it again installs
# nothing that is already present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }

pip_install() {
    # --user where the interpreter allows it; a virtualenv's or a distribution's Python each
    # refuse one of the ways.
    python3 -m pip install -q --user "$@" 2>/dev/null \
        || python3 -m pip install -q "$@" 2>/dev/null \
        || python3 -m pip install -q --user --break-system-packages "$@"
}

say "system packages the tests use: debootstrap (offline base images), curl, setpriv, docker-registry (push tests), kill, promtool (metrics format)"
need=()
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
# Signals for the Ctrl-C and SIGTERM tests come from /bin/kill (bash's builtin is not a program).
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need+=(procps)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    sudo_=()
    [ "$(id -u)" -eq 0 ] || sudo_=(sudo -n)
    "${sudo_[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"
promtool --version 2>&1 | head -1

say "Python packages the tests use: kubernetes-validate (manifests), check-jsonschema (workflow schema), prometheus_client and tritonclient (the server as their clients see it)"
python3 -m kubernetes_validate --version >/dev/null 2>&1 || pip_install kubernetes-validate
command -v check-jsonschema >/dev/null 2>&1 || pip_install check-jsonschema
python3 -c 'import prometheus_client' 2>/dev/null || pip_install prometheus-client
python3 -c 'import tritonclient.http' 2>/dev/null || pip_install 'tritonclient[http]'
export PATH="$PATH:$HOME/.local/bin"
say "uv (pyproject.toml and uv.lock requirement sources are read with it)"
command -v uv >/dev/null 2>&1 || pip_install uv
uv --version
# Tests that need these skip without them; here they must run.
python3 -m kubernetes_validate --version
check-jsonschema --version
python3 -c 'import prometheus_client, tritonclient.http'

say "ONNX Runtime (the library ferry loads), where an installed ferry finds it"
bash scripts/fetch-onnxruntime.sh "$HOME/.local/lib/ferry"

say "docker: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

say "cargo test --locked $*"
cargo test --locked "$@"
