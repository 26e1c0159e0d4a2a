#!/usr/bin/env bash
# What cwasi needs from the system, in one place. `make prereqs` (and so `make demo`,
# `make test`, `make build`, `make bench*`) and `.ci/run` run this first.
#
#   scripts/prereqs.sh          what x86_64 builds, tests, demo and benchmarks need
#   scripts/prereqs.sh arm64    opt-in (`make prereqs-arm64`): what the arm64 cross build and
#                               its emulated tests need (`make build-arm64`, `make test-arm64`)
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
rust_target=wasm32-wasip1

# The arm64 set (Debian multiarch, so Debian only: Ubuntu serves arm64 from another mirror):
#   gcc-aarch64-linux-gnu    the cross linker (.cargo/config.toml) and cross C compiler (ring,
#                            vendored libdbus)
#   libc6-dev-arm64-cross    arm64 glibc to link against, and the root qemu runs tests in
#   libseccomp-dev:arm64     arm64 libseccomp (libcontainer links it), once arm64 is a dpkg
#                            foreign architecture
#   qemu-user-static         qemu-aarch64-static runs arm64 tests here (called directly, so
#                            no binfmt registration is needed)
#   file                     `make build-arm64` shows what it built
arm64=false
case "${1:-}" in
    "") ;;
    arm64)
        arm64=true
        packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libseccomp-dev:arm64 qemu-user-static file)
        rust_target=aarch64-unknown-linux-gnu
        ;;
    *) echo "usage: $0 [arm64]" >&2; exit 2 ;;
esac
read -r -a extra <<<"${CWASI_PREREQS_EXTRA:-}"
packages+=("${extra[@]}")

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
        gcc-aarch64-linux-gnu) command -v aarch64-linux-gnu-gcc >/dev/null ;;
        libc6-dev-arm64-cross) [ -e /usr/aarch64-linux-gnu/include/stdio.h ] ;;
        libseccomp-dev:arm64) [ -e /usr/lib/aarch64-linux-gnu/pkgconfig/libseccomp.pc ] ;;
        qemu-user-static) command -v qemu-aarch64-static >/dev/null || command -v qemu-aarch64 >/dev/null ;;
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
elif ! rustup target list --installed 2>/dev/null | grep -qx "$rust_target"; then
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
        $target_missing && echo "  Rust target: $rust_target$(command -v rustup >/dev/null || echo ' (and rustup is not on PATH)')"
        command=""
        [ ${#missing[@]} -gt 0 ] && command="sudo apt-get install -y --no-install-recommends ${missing[*]}"
        if $arm64 && [[ " ${missing[*]} " == *":arm64 "* ]] && ! dpkg --print-foreign-architectures 2>/dev/null | grep -qx arm64; then
            command="sudo dpkg --add-architecture arm64 && sudo apt-get update && $command"
        fi
        $target_missing && command="${command:+$command && }rustup target add $rust_target"
        echo "install them with:"
        echo "  $command"
        echo "(as root on Debian/Ubuntu, \`make prereqs$($arm64 && echo -arm64)\` does this itself)"
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
    # An arm64 -dev package needs arm64 as a foreign architecture (before the update).
    if [[ " ${missing[*]} " == *":arm64 "* ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
        echo "prereqs: adding arm64 as a dpkg foreign architecture"
        dpkg --add-architecture arm64
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    for s in "${services[@]}"; do
        systemctl stop "$s" 2>/dev/null || service "$s" stop >/dev/null 2>&1 || true
    done
fi

if $target_missing; then
    command -v rustup >/dev/null || { echo "prereqs: rustup is not on PATH; install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
    echo "prereqs: adding the Rust target $rust_target"
    rustup target add "$rust_target"
fi
