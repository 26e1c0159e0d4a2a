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

.PHONY: all prereqs as-root build test-functions test test-wasmedge demo bench bench-quick runwasi-reference install uninstall clean

all: build

# System packages and the wasm32-wasip1 target (scripts/prereqs.sh holds the list): as
# root on Debian/Ubuntu installed when missing, otherwise named before anything compiles.
prereqs:
	@scripts/prereqs.sh

# The tests, the demo and the benchmarks run private containerd instances: root only.
as-root:
	@[ "$$(id -u)" = 0 ] || { echo "make $(MAKECMDGOALS): needs root (it runs private containerd instances)" >&2; exit 1; }

# Everything builds in the release profile, once, for tests, demo and bench alike.
build: prereqs
	$(CARGO) build --release --workspace --bins $(ENGINE_FEATURES)

test-functions: prereqs
	$(CARGO) build --release --target wasm32-wasip1 \
		--manifest-path test-functions/Cargo.toml --target-dir target/test-functions

# Unit tests and the integration suite (a private containerd, as root).
test: prereqs as-root
	$(CARGO) test --release --workspace $(ENGINE_FEATURES)

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

install: build
	install -D -m 0755 $(SHIM) $(DESTDIR)$(PREFIX)/bin/containerd-shim-cwasi-v1
	install -D -m 0755 target/release/cwasi $(DESTDIR)$(PREFIX)/bin/cwasi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/containerd-shim-cwasi-v1 $(DESTDIR)$(PREFIX)/bin/cwasi

clean:
	$(CARGO) clean
