# cwasi: build, test, demo, bench, install.
CARGO   ?= cargo
PREFIX  ?= /usr/local
DESTDIR ?=
SHIM    := target/release/containerd-shim-cwasi-v1
# ENGINE=wasmedge builds the shim on WasmEdge (needs libwasmedge 0.17.1, WASMEDGE_DIR).
ENGINE  ?= wasmtime
ifeq ($(ENGINE),wasmedge)
ENGINE_FEATURES := --features cwasi-shim/wasmedge
endif

.PHONY: all prereqs prereqs-arm64 as-root build build-arm64 test-functions test test-arm64 test-arm64-units test-wasmedge demo bench bench-quick runwasi-reference install uninstall clean

all: build

# System packages and the wasm32-wasip1 target (scripts/prereqs.sh holds the list): as
# root on Debian/Ubuntu installed when missing, otherwise named before anything compiles.
prereqs:
	@scripts/prereqs.sh

# Opt-in: Debian's aarch64 cross toolchain, arm64 libseccomp (multiarch), qemu-user-static and
# the aarch64 Rust target. `make prereqs` (and so CI) never installs these.
prereqs-arm64:
	@scripts/prereqs.sh arm64

# The tests, the demo and the benchmarks run private containerd instances: root only.
as-root:
	@[ "$$(id -u)" = 0 ] || { echo "make $(MAKECMDGOALS): needs root (it runs private containerd instances)" >&2; exit 1; }

# Everything builds in the release profile, once, for tests, demo and bench alike.
build: prereqs
	$(CARGO) build --release --workspace --bins $(ENGINE_FEATURES)

test-functions: prereqs
	$(CARGO) build --release --target wasm32-wasip1 \
		--manifest-path test-functions/Cargo.toml --target-dir target/test-functions

# Unit tests and the integration suite (a private containerd, as root), then the arm64
# emulated unit tests when their prerequisites are installed (`make prereqs-arm64`). They
# build two small crates for aarch64, not the whole shim (that is `make test-arm64`).
test: prereqs as-root
	$(CARGO) test --release --workspace $(ENGINE_FEATURES)
	@if $(ARM64_PRESENT); then $(MAKE) --no-print-directory test-arm64-units; \
	else echo "test-arm64-units skipped: no qemu-aarch64 or no $(ARM64_TARGET) Rust target (make prereqs-arm64)"; fi

# The engine-independent suite (lifecycle, limits, the three modes, CRI) on WasmEdge.
test-wasmedge: prereqs as-root
	$(CARGO) test --release -p cwasi-shim --features wasmedge

demo: prereqs as-root build test-functions
	target/release/cwasi-demo

# The full matrix, start times against stock runwasi; writes target/bench/report.{md,csv,svg}.
bench: prereqs as-root build test-functions runwasi-reference
	target/release/cwasi-bench all --runs 20

# A small subset that CI runs to keep the harness working (timings never gate CI).
bench-quick: prereqs as-root build test-functions
	target/release/cwasi-bench matrix --quick

# Bench-only reference shim (crates.io containerd-shim-wasm + wasmtime), in
# cwasi's target directory so both share one wasmtime build.
runwasi-reference:
	$(CARGO) build --release --manifest-path bench/runwasi-reference/Cargo.toml --target-dir target

# arm64 (aarch64) edge devices: the shim cross-built with Debian's cross toolchain, and its
# unit tests and a guest-runner smoke run under qemu-user (README: arm64 / edge).
ARM64_TARGET := aarch64-unknown-linux-gnu
ARM64_SHIM   := target/$(ARM64_TARGET)/release/containerd-shim-cwasi-v1
QEMU_AARCH64 ?= $(firstword $(shell command -v qemu-aarch64-static qemu-aarch64 2>/dev/null))
ARM64_PRESENT := [ -n "$(QEMU_AARCH64)" ] && rustup target list --installed 2>/dev/null | grep -qx $(ARM64_TARGET)
# pkg-config reads arm64's .pc files (libseccomp) for the arm64 target only; cargo runs
# aarch64 test binaries under qemu. No `-L /usr/aarch64-linux-gnu`: libseccomp-dev:arm64
# brings multiarch libc6:arm64, whose loader and libc (/lib/aarch64-linux-gnu) match; with
# -L, qemu takes the cross package's ld.so but the loader still finds multiarch libc.so.6,
# and a mismatched pair hangs in pthread_create.
ARM64_ENV := PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$(QEMU_AARCH64)"

build-arm64: prereqs prereqs-arm64
	$(ARM64_ENV) $(CARGO) build --release --target $(ARM64_TARGET) -p cwasi-shim --bin containerd-shim-cwasi-v1
	@file $(ARM64_SHIM)

# Unit tests of the shared-memory protocol and the engine layer under qemu-user.
test-arm64-units: prereqs prereqs-arm64
	$(ARM64_ENV) $(CARGO) test --release --target $(ARM64_TARGET) -p cwasi-comm -p cwasi-engine --lib

# Those, then the arm64 shim's guest runner on hello.wasm under qemu-user. No containerd:
# these need not run as root.
test-arm64: test-arm64-units build-arm64 test-functions
	QEMU_AARCH64="$(QEMU_AARCH64)" scripts/arm64-smoke.sh $(ARM64_SHIM)

install: build
	install -D -m 0755 $(SHIM) $(DESTDIR)$(PREFIX)/bin/containerd-shim-cwasi-v1
	install -D -m 0755 target/release/cwasi $(DESTDIR)$(PREFIX)/bin/cwasi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/containerd-shim-cwasi-v1 $(DESTDIR)$(PREFIX)/bin/cwasi

clean:
	$(CARGO) clean
