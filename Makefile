# Safehouse — build, test, install and demo on Debian 12.
# Everything here runs as root (containerd, runsc and mounts need it).

CARGO        ?= cargo
PREFIX       ?= /usr/local
CONFIG_DIR   ?= /etc/safehouse
RELEASE_DIR  := target/release
DEBUG_DIR    := target/debug
SHIM         := containerd-shim-safehouse-v2

.PHONY: help deps build build-debug install uninstall test test-unit test-integration lint bench demo clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## Install everything build and tests need (apt: containerd, runsc from backports, image tools; rustup components)
	bash scripts/deps.sh

build: ## Release build of the shim and the safehouse CLI
	$(CARGO) build --release --workspace --bins

build-debug:
	$(CARGO) build --workspace --bins

install: build ## Install the shim and CLI on PATH, a default config and the containerd snippet
	install -D -m 0755 $(RELEASE_DIR)/$(SHIM) $(PREFIX)/bin/$(SHIM)
	if [ -f $(RELEASE_DIR)/safehouse ]; then install -D -m 0755 $(RELEASE_DIR)/safehouse $(PREFIX)/bin/safehouse; fi
	install -d -m 0755 $(CONFIG_DIR) $(CONFIG_DIR)/policies
	[ -f $(CONFIG_DIR)/config.toml ] || install -m 0644 deploy/config/config.toml $(CONFIG_DIR)/config.toml
	install -D -m 0644 deploy/containerd/safehouse.toml $(CONFIG_DIR)/containerd-snippet.toml
	@echo
	@echo "Installed $(PREFIX)/bin/$(SHIM). To register it with containerd, add"
	@echo "$(CONFIG_DIR)/containerd-snippet.toml to /etc/containerd/config.toml (see README) and restart containerd."

uninstall: ## Remove what install put down (keeps $(CONFIG_DIR)/config.toml)
	rm -f $(PREFIX)/bin/$(SHIM) $(PREFIX)/bin/safehouse $(CONFIG_DIR)/containerd-snippet.toml

test: build-debug test-unit test-integration ## Unit and integration tests (integration needs root, containerd and runsc)

test-unit:
	$(CARGO) test --workspace --exclude safehouse-integration

test-integration:
	$(CARGO) test -p safehouse-integration

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: build ## Benchmarks: cold start vs the Go shim, runsc and runc; shim memory; violation-to-kill; policy compile; audit pipeline and openat storm; CRI pods
	bash scripts/bench.sh
	$(CARGO) bench -p safehouse-policy --bench compile -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p safehouse-audit --bench pipeline -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p safehouse-audit --bench openat_storm

demo: ## Set up this machine and run an agent task in a sandbox, end to end
	bash scripts/demo.sh

clean:
	$(CARGO) clean
