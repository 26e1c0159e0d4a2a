# cwasi: build, test, demo, bench, install.
CARGO   ?= cargo
PREFIX  ?= /usr/local
DESTDIR ?=
SHIM    := target/release/containerd-shim-cwasi-v1

.PHONY: all build test-functions test demo bench install uninstall clean

all: build

# Everything builds in the release profile, once, for tests, demo and bench alike.
build:
	$(CARGO) build --release --workspace --bins

test-functions:
	$(CARGO) build --release --target wasm32-wasip1 \
		--manifest-path test-functions/Cargo.toml --target-dir target/test-functions

# Unit tests and the integration suite (a private containerd, as root).
test:
	$(CARGO) test --release --workspace

demo: build test-functions
	target/release/cwasi-demo

bench: build test-functions
	target/release/cwasi-bench all --runs 20

install: build
	install -D -m 0755 $(SHIM) $(DESTDIR)$(PREFIX)/bin/containerd-shim-cwasi-v1

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/containerd-shim-cwasi-v1

clean:
	$(CARGO) clean
