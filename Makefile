# sheepdog: distributed block storage for QEMU/KVM.
GO       ?= go
BIN      := bin/sheepdog
NODES    ?= 3
DIR      ?= $(CURDIR)/.sheepdog-local
SIM_RUNS ?= 1000
SIM_OPS  ?= 2000
FAULT_RUNS ?= 50
FAULT_SEED ?= 1
# staticcheck for lint, installed through the Go module proxy when missing.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Debian packages the tests drive as real clients.
TEST_PKGS := qemu-utils libnbd-bin fio nftables iproute2
# Packages that start goroutines run again under the race detector.
RACE_PKGS := ./internal/... ./net/... ./nbd/... ./disk/... ./daemon/... ./linearizability/... ./faults/... ./cmd/...

.PHONY: all build run test deps sim faults bench lint clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/sheepdog

# A local cluster of $(NODES) nodes (real TCP on loopback, real disk) with
# an NBD export ready for QEMU.
run: build
	./$(BIN) local --nodes $(NODES) --dir $(DIR)

# Every test, with the real clients installed first.
test: deps build
	$(GO) vet ./...
	$(GO) test ./... -count=1 -timeout 30m
	$(GO) test -race -count=1 -timeout 30m $(RACE_PKGS)
	$(GO) test -race -count=1 -run 'TestDeterminism|TestRegressionSeeds' ./sim/
	./$(BIN) sim --seed 10001 --runs 200 --faults all
	$(MAKE) --no-print-directory fuzz

# Fuzz targets (package:target) for every decoder of bytes from outside
# a node, each run for $(FUZZTIME) (a duration, or Nx for N executions) by
# `make fuzz`, part of `make test`; their seed corpora are kept in each
# package's testdata/fuzz, and a failing input found is written there. A
# run that fails with nothing but "context deadline exceeded" and writes
# no failing input is Go's fuzz coordinator racing its own -fuzztime
# deadline (go.dev/issue/75804, fixed in Go 1.27), not a finding.
FUZZTIME ?= 10s
FUZZ_TARGETS := ./nbd:FuzzHandshake ./nbd:FuzzHandshakeTLS ./nbd:FuzzRequests \
	./net:FuzzFrame ./net:FuzzHandshake \
	./core:FuzzUnmarshalMessage ./core:FuzzLogEntries ./core:FuzzClusterState \
	./daemon:FuzzAdminRequest \
	./disk:FuzzStoreOpen ./disk:FuzzLoadRaft ./disk:FuzzMetaHdr

.PHONY: fuzz
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		out=$$($(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg/ 2>&1); rc=$$?; \
		execs=$$(printf '%s\n' "$$out" | sed -n 's/.*execs: \([0-9]*\).*/\1/p' | tail -n 1); \
		if [ $$rc -eq 0 ]; then \
			echo "fuzz $$pkg $$name: $${execs:-0} execs"; \
		elif printf '%s\n' "$$out" | grep -q 'Failing input written' || \
			! printf '%s\n' "$$out" | grep -qx '    context deadline exceeded'; then \
			printf '%s\n' "$$out"; echo "fuzz $$pkg $$name: FAILED"; exit 1; \
		else \
			echo "fuzz $$pkg $$name: $${execs:-0} execs (stopped by go.dev/issue/75804, no failing input)"; \
		fi; \
	done

# Installs the Debian packages the tests need, when missing.
deps:
	@missing=""; \
	for p in $(TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# A longer seeded fault run: $(SIM_RUNS) seeds x $(SIM_OPS) operations, every fault.
sim: build
	./$(BIN) sim --seed 1 --runs $(SIM_RUNS) --ops $(SIM_OPS) --faults all --out sim-out
	./$(BIN) sim --seed 100001 --runs $$(( $(SIM_RUNS) / 4 )) --ops $(SIM_OPS) --faults all --quiet --out sim-out

# The fault harness on real processes (root): $(FAULT_RUNS) seeds, every
# fault kind; failed runs are kept under faults-out/.
faults: deps build
	./$(BIN) faults --runs $(FAULT_RUNS) --seed $(FAULT_SEED) --faults 6 --out faults-out

# Performance against a baseline measured in the same run, as ratios.
# BENCH_QUICK=1 runs a short test of the harness; BENCH_FLAGS adds flags
# (go run ./scripts/bench --help lists them).
bench: deps build
	$(GO) run ./scripts/bench --bin $(BIN) $(BENCH_FLAGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@sc=$$(command -v staticcheck || echo "$$($(GO) env GOPATH)/bin/staticcheck"); \
	[ -x "$$sc" ] || $(GO) install $(STATICCHECK) || true; \
	if [ -x "$$sc" ]; then "$$sc" ./...; else echo "staticcheck could not be installed: skipped"; fi

clean:
	rm -rf bin sim-out faults-out

# Endurance tests of real processes: 50 kill -9 rounds during verifying fio
# writes, 20 disk replacements, a full disk, corrupted object files.
.PHONY: endurance
endurance: deps build
	ENDURANCE_ROUNDS=50 REPLACE_ROUNDS=20 $(GO) test ./cmd/sheepdog/ -count=1 -timeout 30m -v \
		-run 'TestE2E(KillNine|DiskReplace|FullDisk|Corrupt)'
