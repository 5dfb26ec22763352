# snakepit for Go. `make test` is what CI runs.
GO        ?= go
FUZZTIME  ?= 30s
BENCHTIME ?= 2s
PY311_LIB ?= /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0
PY311_EXE ?= /usr/bin/python3.11

.PHONY: test test-asan lint fuzz soak chaos bench bench-quick bench-go bench-311 docker

# Vet, the cgo rule, the race detector (which also enables -d=checkptr over
# the cgo package), and the whole suite: real Python, hermetic 3.14 in
# process and the system's 3.11 in a re-executed child.
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...

# The cgo package and the thread profile under AddressSanitizer: the shim
# is compiled with -fsanitize=address and libpython, loaded with dlopen,
# runs under the ASan runtime (its allocations are intercepted; its own
# code is not instrumented). Leak detection is off: CPython keeps objects
# alive until exit by design, and sub-interpreters leak upstream.
ASAN_CFLAGS ?= -fsanitize=address -fno-omit-frame-pointer -O1 -g
test-asan:
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 \
	CGO_CFLAGS="$(ASAN_CFLAGS)" CGO_LDFLAGS="-fsanitize=address" \
	  $(GO) test -asan -count=1 -timeout 20m ./embed/ ./gil/

lint:
	@unformatted=$$(gofmt -l .); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	@cgo=$$($(GO) list -f '{{if .CgoFiles}}{{.ImportPath}}{{end}}' ./...); \
	  if [ "$$cgo" != "github.com/snakepit-go/snakepit/embed" ]; then \
	    echo "only embed may use cgo; cgo packages: $$cgo"; exit 1; fi

# Overload and a crash storm, bounded by SOAK (default 5m); prints the
# summary table and fails on a lost or duplicated call or an orphan.
SOAK ?= 5m
soak:
	$(GO) run ./soak -duration $(SOAK)

# The randomized tests at length (make test runs a share of each): the
# pool over scripted workers in virtual time, CHAOS_SEEDS runs of 300 steps,
# 3000 bursts of 64 callers on a pipeline of 16 (real process workers),
# the process profile against the fault-injecting child, 600 steps, and the
# thread profile's concurrency torture (embed), 6000 steps on the hermetic
# 3.14 and again on 3.11 (SNAKEPIT_TORTURE_SEED=n replays a seed). The long
# pool run is not under -race (make test runs its 150 seeds under -race):
# in runs of thousands of synctest bubbles the race runtime itself crashes
# (SIGSEGV or a ThreadSanitizer CHECK, in runtime.(*timer).maybeRunChan ->
# unlockAndRun -> raceacquirectx for a bubble's timer).
CHAOS_SEEDS ?= 20000
chaos:
	$(GO) test -count=1 -timeout 60m -run '^TestChaos$$' ./pool/ -chaos.seeds=$(CHAOS_SEEDS) -chaos.steps=300
	$(GO) test -count=1 -timeout 20m -run '^TestPipelineBursts$$' ./pool/ -pipeline.bursts=3000
	SNAKEPIT_CHAOS=1 $(GO) test -race -count=1 -timeout 30m -run '^(TestChaos|TestHostRegionRandom)$$' ./subproc/
	SNAKEPIT_TORTURE=long $(GO) test -race -count=1 -timeout 30m -run '^(TestTorture|TestVersionMatrix)$$' ./embed/

# Every fuzz target, FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

# The thread-vs-process benchmark against the baselines, on the hermetic
# CPython 3.14: prints a table, writes bench/results/ (the committed
# figures). bench-quick prints a smaller sweep and writes nothing.
bench:
	$(GO) run ./bench -out bench/results

bench-quick:
	$(GO) run ./bench -quick

# The packages' Go benchmarks (call path, parallelism, overhead), on the
# hermetic 3.14, then on 3.11.
bench-go:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./pymarshal/ ./embed/ ./gil/ ./subproc/ ./pool/
	$(MAKE) bench-311

bench-311:
	SNAKEPIT_LIBPYTHON=$(PY311_LIB) $(GO) test -run '^$$' -bench 'CallNoop$$|CallDict|ParallelCPU' -benchtime $(BENCHTIME) ./embed/
	SNAKEPIT_TEST_WANT_MINOR=11 SNAKEPIT_LIBPYTHON=$(PY311_LIB) $(GO) test -run '^$$' -bench 'Noop$$|NoopDeadline|CPUScaling' -benchtime $(BENCHTIME) ./gil/
	SNAKEPIT_PYTHON=$(PY311_EXE) $(GO) test -run '^$$' -bench 'Noop$$|EchoFloor|Startup' -benchtime $(BENCHTIME) ./subproc/

docker:
	docker build -f docker/Dockerfile -t snakepit-go .
