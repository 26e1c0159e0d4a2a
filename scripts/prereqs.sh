#!/usr/bin/env bash
# What cwasi needs from the system, in one place. `make prereqs` (and so `make demo`,
# `make test`, `make build`, `make bench*`) and `.ci/run` run this first.
#
# As root on Debian/Ubuntu it installs what is missing; otherwise it stops at once, before
# anything compiles, naming what is missing and the command that installs it.
#
#   CWASI_PREREQS_NO_INSTALL=1   only check and report, even as root
#   CWASI_PREREQS_EXTRA="a b"    check these packages too (to try the report)
set -euo pipefail

# Debian packages, and why each one is here:
#   containerd         the private containerd that tests, demo and benchmarks drive (and `ctr`)
#   redis-server       the Redis of remote-mode tests, demo and benchmarks (tests start their own)
#   protobuf-compiler  `protoc` for the gRPC code that containerd-shimkit's containerd-client
#                      dependency (and the CRI client of the Kubernetes test) generates at build time
#   libseccomp-dev     containerd-shimkit links libcontainer, which links libseccomp
#   pkg-config         how libseccomp's build script finds it
#   gcc, libc6-dev     the linker Rust uses, and C parts of dependencies (ring, vendored libdbus)
#   containernetworking-plugins  the CNI plugins (bridge, host-local, loopback in /usr/lib/cni)
#                      that give the Kubernetes test's pods their own network
#   iproute2           `ip`: the tests make and remove network namespaces and the CNI bridge
# No libssl-dev: remote-mode TLS uses rustls.
packages=(containerd redis-server protobuf-compiler libseccomp-dev pkg-config gcc libc6-dev containernetworking-plugins iproute2)
read -r -a extra <<<"${CWASI_PREREQS_EXTRA:-}"
packages+=("${extra[@]}")
wasm_target=wasm32-wasip1

# What each package provides, looked for before asking dpkg (and where there is no dpkg).
provides() {
    case "$1" in
        containerd) command -v containerd >/dev/null && command -v ctr >/dev/null ;;
        redis-server) command -v redis-server >/dev/null ;;
        protobuf-compiler) command -v protoc >/dev/null ;;
        libseccomp-dev) pkg-config --exists libseccomp 2>/dev/null ;;
        pkg-config) command -v pkg-config >/dev/null ;;
        gcc) command -v cc >/dev/null ;;
        libc6-dev) [ -e /usr/include/stdio.h ] ;;
        containernetworking-plugins) [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] ;;
        iproute2) command -v ip >/dev/null ;;
        *) command -v "$1" >/dev/null ;;
    esac
}

# What a package provides counts first: a host with Docker's containerd.io has containerd
# without Debian's package, and installing that one would remove Docker's.
installed() {
    provides "$1" && return 0
    command -v dpkg-query >/dev/null && dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done

target_missing=false
if ! command -v rustup >/dev/null; then
    target_missing=true
elif ! rustup target list --installed 2>/dev/null | grep -qx "$wasm_target"; then
    target_missing=true
fi

if [ ${#missing[@]} -eq 0 ] && ! $target_missing; then
    exit 0
fi

can_install=false
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -z "${CWASI_PREREQS_NO_INSTALL:-}" ]; then
    can_install=true
fi

if ! $can_install; then
    {
        echo "prereqs: missing, nothing was compiled:"
        [ ${#missing[@]} -gt 0 ] && echo "  packages: ${missing[*]}"
        $target_missing && echo "  Rust target: $wasm_target$(command -v rustup >/dev/null || echo ' (and rustup is not on PATH)')"
        command=""
        [ ${#missing[@]} -gt 0 ] && command="sudo apt-get install -y --no-install-recommends ${missing[*]}"
        $target_missing && command="${command:+$command && }rustup target add $wasm_target"
        echo "install them with:"
        echo "  $command"
        echo "(as root on Debian/Ubuntu, \`make prereqs\` does this itself)"
    } >&2
    exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    echo "prereqs: installing ${missing[*]}"
    # Which services the install brings in (Debian starts them): the tests, the demo and
    # the benchmarks start their own private ones, so stop only what this install started.
    services=()
    for p in "${missing[@]}"; do
        case "$p" in containerd | redis-server) services+=("$p") ;; esac
    done
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    for s in "${services[@]}"; do
        systemctl stop "$s" 2>/dev/null || service "$s" stop >/dev/null 2>&1 || true
    done
fi

if $target_missing; then
    command -v rustup >/dev/null || { echo "prereqs: rustup is not on PATH; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
    echo "prereqs: adding the Rust target $wasm_target"
    rustup target add "$wasm_target"
fi
