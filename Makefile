# Safehouse — build, test, install and demo on Debian 12.
# Everything here runs as root (containerd, runsc and mounts need it).

CARGO        ?= cargo
PREFIX       ?= /usr/local
CONFIG_DIR   ?= /etc/safehouse
RELEASE_DIR  := target/release
DEBUG_DIR    := target/debug
SHIM         := containerd-shim-safehouse-v2

.PHONY: help deps build build-debug install uninstall installer-image overhead test test-unit test-integration lint bench demo clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## Install everything build and tests need (apt: containerd, runsc from backports, image tools; rustup components)
	bash scripts/deps.sh

build: ## Release build of the shim and the safehouse CLI
	$(CARGO) build --release --workspace --bins

build-debug:
	$(CARGO) build --workspace --bins

install: build ## Install the shim, CLI, configs and policies (safehouse node install); REGISTER=yes also registers the handlers with containerd
	rm -rf target/stage && install -d target/stage/bin target/stage/config target/stage/policies
	install -m 0755 $(RELEASE_DIR)/$(SHIM) $(RELEASE_DIR)/safehouse target/stage/bin/
	install -m 0644 deploy/config/*.toml target/stage/config/
	install -m 0644 deploy/policies/*.yaml target/stage/policies/
	$(RELEASE_DIR)/safehouse node install --from target/stage --prefix $(PREFIX) --config-dir $(CONFIG_DIR) $(if $(filter yes,$(REGISTER)),,--no-register)
	install -D -m 0644 deploy/containerd/safehouse.toml $(CONFIG_DIR)/containerd-snippet.toml
	@echo
	@echo "Check the node with: safehouse doctor"

uninstall: ## Remove what install put down and unregister the handlers (keeps $(CONFIG_DIR))
	if [ -x $(PREFIX)/bin/safehouse ]; then $(PREFIX)/bin/safehouse node uninstall --prefix $(PREFIX) --config-dir $(CONFIG_DIR); \
	else rm -f $(PREFIX)/bin/$(SHIM) $(PREFIX)/bin/safehouse; fi
	rm -f $(CONFIG_DIR)/containerd-snippet.toml

installer-image: build ## The node installer image for deploy/kubernetes (an OCI tarball, no Docker)
	bash scripts/installer-image.sh

overhead: build ## Per-sandbox memory and idle CPU (the RuntimeClass overhead.podFixed figures)
	bash scripts/overhead.sh

test: build-debug test-unit test-integration ## Unit and integration tests (integration needs root, containerd and runsc)

test-unit:
	$(CARGO) test --workspace --exclude safehouse-integration

test-integration:
	$(CARGO) test -p safehouse-integration

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: build ## Benchmarks: cold start vs the Go shim, runsc and runc; shim memory; violation-to-kill; policy compile; audit pipeline and openat storm; egress filter; CRI pods
	bash scripts/bench.sh
	bash scripts/bench-egress.sh
	bash scripts/overhead.sh
	$(CARGO) bench -p safehouse-policy --bench compile -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p safehouse-audit --bench pipeline -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p safehouse-audit --bench openat_storm

demo: ## Set up this machine and run an agent task in a sandbox, end to end
	bash scripts/demo.sh

clean:
	$(CARGO) clean
