# mesh-agent — build, test, demo and install.
#
#   make deps    install missing system packages (apt-get, when root)
#   make build   release binaries in .build/release
#   make test    deps + build + unit tests + integration tests (root: real kernel)
#   make bench   every path (direct, mesh, passthrough, HAProxy mTLS) in one run -> docs/benchmarks.md (root)
#   make bench-micro   cost of the hot pure pieces: an authorization decision, an identity lookup, an HBONE stream
#   make demo    Podman pods on two nodes, each captured in its own namespace: mTLS, identities, STRICT (root)
#   make demo-host  the host-mode tour: workloads as cgroups, connections, policies (root)
#   make demo-journey  permissive to least privilege (docs/journey.md): graph, suggest, dry-run, enforce, grants (root)
#   make test-sanitize   unit tests under AddressSanitizer and ThreadSanitizer, then the agent built
#                with each through the tunnel, restart and policy integration tests (root)
#   make fuzz    every libFuzzer target (Fuzz/Targets) for FUZZ_SECONDS each (default 60); FUZZ_TARGETS="A B" for some

SWIFT      ?= swift
PYTHON     ?= python3
PREFIX     ?= /usr/local
DESTDIR    ?=
DEBUG_BIN  := .build/debug
RELEASE_BIN := .build/release

# Debian packages the build, the tests and the demo need.
DEB_PACKAGES := gcc libc6-dev libssl-dev openssl libmnl-dev libnftnl-dev libsqlite3-dev pkg-config nftables iproute2 util-linux procps socat iperf3 tcpdump wrk systemd python3 containernetworking-plugins podman runc busybox-static graphviz
# Python modules the integration tests use (pip, or Debian's packages for /usr/bin/python3).
# MODULE or MODULE=PIP_PACKAGE when the names differ.
PY_MODULES := pytest h2 cryptography yaml=pyyaml

.PHONY: all deps build build-debug test unit-test integration-test fuzz fuzz-regress test-sanitize demo demo-host demo-journey clean install install-files bench bench-micro

all: build

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "missing packages:$$missing"; echo "install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@for entry in $(PY_MODULES); do \
	  m=$${entry%%=*}; p=$${entry#*=}; \
	  $(PYTHON) -c "import $$m" 2>/dev/null && continue; \
	  echo "installing python module $$m ($$p)"; \
	  $(PYTHON) -m pip install -q $$p 2>/dev/null || \
	  { [ "$$(id -u)" -eq 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-$$m; } || \
	  { echo "python module $$m is missing: install it with: pip install $$p"; exit 1; }; \
	done
	@command -v $(SWIFT) >/dev/null || { echo "swift is not on PATH (expected Swift 6 at /opt/swift/usr/bin)"; exit 1; }

build: deps
	$(SWIFT) build -c release

build-debug: deps
	$(SWIFT) build --build-tests

unit-test: build-debug
	$(SWIFT) test --skip-build

# -rs lists every skip with its reason; under CI=true a skip fails the run
# (Tests/integration/conftest.py).
integration-test: build-debug
	MESH_AGENT_BIN=$(CURDIR)/$(DEBUG_BIN) $(PYTHON) -m pytest -v -rs -p no:cacheprovider Tests/integration

# Fuzzing (Fuzz/fuzz.sh): `make fuzz` explores, new inputs go to .build-fuzz/corpus
# (FUZZ_MERGE=1 merges those that add coverage into Fuzz/Corpus); fuzz-regress
# runs every committed corpus input once, so a crash found once stays found.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) SWIFT=$(SWIFT) bash Fuzz/fuzz.sh fuzz $(FUZZ_TARGETS)

fuzz-regress: deps
	SWIFT=$(SWIFT) bash Fuzz/fuzz.sh regress $(FUZZ_TARGETS)

# Each phase timed, so a slow one shows before CI's limit does.
test:
	@start=$$(date +%s); status=0; \
	for phase in build-debug unit-test fuzz-regress integration-test; do \
	  phase_start=$$(date +%s); \
	  $(MAKE) --no-print-directory $$phase || { status=$$?; echo "make test: $$phase failed"; break; }; \
	  echo "make test: $$phase took $$(( $$(date +%s) - phase_start )) s"; \
	done; \
	echo "make test: $$( [ $$status -eq 0 ] && echo passed || echo FAILED ) in $$(( $$(date +%s) - start )) s"; \
	exit $$status

# Each sanitizer in its own build directory (.build-address, .build-thread);
# Tests/Sanitizers/run.sh says what runs and prints how long each part took.
test-sanitize: deps
	SWIFT=$(SWIFT) PYTHON=$(PYTHON) Tests/Sanitizers/run.sh

# Every path (direct, mesh, mesh-passthrough, an HAProxy mTLS pair) on one
# two-node topology in one run; writes bench/results/TIME.json and regenerates
# docs/benchmarks.md. Root; not part of make test.
BENCH_PACKAGES := nginx-light haproxy iperf3 wrk openssl
bench: build
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	MESH_AGENT_BIN=$(CURDIR)/$(RELEASE_BIN) $(PYTHON) bench/run.py

# The hot pure pieces of the data path, in memory: one authorization decision
# (L4 and L7) with 10 and 10,000 policies loaded, one cgroup-to-workload lookup
# with 100 and 1,000 workloads, one HBONE stream opened and closed.
bench-micro: build
	$(RELEASE_BIN)/micro-bench

demo: build
	MESH_AGENT_BIN=$(CURDIR)/$(RELEASE_BIN) bash deploy/demo/demo.sh

demo-host: build
	MESH_AGENT_BIN=$(CURDIR)/$(RELEASE_BIN) bash deploy/demo/demo-host.sh

demo-journey: build
	MESH_AGENT_BIN=$(CURDIR)/$(RELEASE_BIN) bash deploy/demo/journey.sh

install: build install-files

# The files of an install, from binaries already built (RELEASE_BIN).
install-files:
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(RELEASE_BIN)/mesh-agent $(RELEASE_BIN)/agentctl $(RELEASE_BIN)/mesh-agent-cni $(DESTDIR)$(PREFIX)/bin/
	install -d $(DESTDIR)/etc/mesh-agent $(DESTDIR)/etc/mesh-agent/policies.example
	install -m 0644 deploy/examples/agent.yaml $(DESTDIR)/etc/mesh-agent/agent.yaml.example
	install -m 0644 deploy/examples/policies/*.yaml $(DESTDIR)/etc/mesh-agent/policies.example/
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|/usr/local/bin|$(PREFIX)/bin|g' deploy/mesh-agent.service > $(DESTDIR)/etc/systemd/system/mesh-agent.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/mesh-agent.service
	install -d $(DESTDIR)/etc/logrotate.d
	install -m 0644 deploy/logrotate/mesh-agent $(DESTDIR)/etc/logrotate.d/mesh-agent
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions
	$(RELEASE_BIN)/agentctl --generate-completion-script bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/agentctl
	$(RELEASE_BIN)/agentctl --generate-completion-script zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_agentctl

clean:
	rm -rf .build .build-fuzz .build-address .build-thread
