# walship: build, test and measure. `make test` installs what the tests need
# (PostgreSQL 14-18, MinIO) into a cache outside the clone, then runs them
# all against one shared MinIO server.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
SERVE   := $(GO) run ./internal/miniotest/serve --

.PHONY: all build services test lint bench demo clean soak fuzz

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/walship ./cmd/walship

services:
	bash scripts/install-postgres.sh
	bash scripts/install-minio.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 ./internal/layout

test: services lint
	$(SERVE) $(GO) test -count=1 -timeout 30m ./...

# bench: the storage and archiver benchmarks, then walship against
# pg_receivewal, pg_basebackup, pgBackRest and barman-cloud on one
# PostgreSQL 15 and one MinIO over HTTPS (bench/, which installs the peers
# from Debian). The catch-up runs at scale 40 (490 MiB of WAL): barman's
# per-segment gzip takes minutes, and a full run stays under 30 minutes.
bench: services build
	$(SERVE) $(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./storage/...
	$(SERVE) $(GO) test -run '^$$' -bench SynchronousCommit -benchtime 300x ./archiver
	$(SERVE) $(GO) test -run '^$$' -bench SyncInterval -benchtime 10x ./archiver
	$(GO) run ./bench/catchup -scale 40
	$(GO) run ./bench/backup -scale 100

# soak runs the randomized trials long: 100 kills (and SIGTERMs and
# PostgreSQL restarts) of the archiver under load, half of them (restore)
# under a storage fault of MinIO's (resets, cut requests, 500/503, an
# outage of writes, latency), each checked by a restore (restore) or
# against the slot (archiver). Not part of test. Replay a run with
# WALSHIP_TRIAL_SEED=<the seed it logged>.
soak: services
	WALSHIP_TRIALS=$${WALSHIP_TRIALS:-100} $(SERVE) $(GO) test -p 1 -count=1 -timeout 3h -run '^(TestTrials|TestKillTrials)$$' -v ./restore ./archiver

# fuzz runs each fuzz target for FUZZTIME, one after another. Not part of
# test, which runs their seed corpora (f.Add and testdata/fuzz) as tests.
# A failing input is written to the package's testdata/fuzz/<target>/.
# Minimizing each new input for the default minute would stall a short run;
# temporary files (FuzzExtract makes a directory tree per input) go to
# memory where there is /dev/shm.
FUZZTIME     ?= 20s
FUZZMINIMIZE ?= 1s
FUZZPARALLEL ?= 1
FUZZTMPDIR   ?= $(if $(wildcard /dev/shm/.),/dev/shm,$(or $(TMPDIR),/tmp))
FUZZ          = TMPDIR=$(FUZZTMPDIR) $(GO) test -run '^$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) -parallel $(FUZZPARALLEL)

fuzz:
	$(FUZZ) -fuzz '^FuzzParseFileName$$' ./internal/wal
	$(FUZZ) -fuzz '^FuzzParseLSN$$' ./internal/wal
	$(FUZZ) -fuzz '^FuzzParseHistory$$' ./internal/wal
	$(FUZZ) -fuzz '^FuzzReader$$' ./internal/walrec
	$(FUZZ) -fuzz '^FuzzCarry$$' ./internal/walrec
	$(FUZZ) -fuzz '^FuzzParseBackup$$' ./storage/catalog
	$(FUZZ) -fuzz '^FuzzParseMeta$$' ./storage/catalog
	$(FUZZ) -fuzz '^FuzzParseWALKey$$' ./storage/catalog
	$(FUZZ) -fuzz '^FuzzDecodeIndex$$' ./storage/catalog
	$(FUZZ) -fuzz '^FuzzNewReader$$' ./storage/codec
	$(FUZZ) -fuzz '^FuzzParse$$' ./storage/location
	$(FUZZ) -fuzz '^FuzzParseSecret$$' ./storage/location
	$(FUZZ) -fuzz '^FuzzParseSize$$' ./storage/location
	$(FUZZ) -fuzz '^FuzzParseSchedule$$' ./scheduler
	$(FUZZ) -fuzz '^FuzzSplitWriter$$' ./archiver
	$(FUZZ) -fuzz '^FuzzRedact$$' ./archiver
	$(FUZZ) -fuzz '^FuzzBaseBackupStream$$' ./archiver
	$(FUZZ) -fuzz '^FuzzExtract$$' ./restore
	$(FUZZ) -fuzz '^FuzzReadSettings$$' ./cmd/walship
	$(FUZZ) -fuzz '^FuzzParseTargetTime$$' ./cmd/walship

demo: build
	bash scripts/install-postgres.sh
	bash scripts/demo.sh

clean:
	rm -rf bin
