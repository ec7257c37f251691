# Every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install format lint mypy test chaos demo demo-heartbeat bench bench-debounce bench-load bench-cluster bench-failover bench-replicas bench-results bench-waiters bench-limits bench-queues clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

format: $(STAMP)
	$(BIN)/ruff check --fix --quiet delayq tests benchmarks examples
	$(BIN)/ruff format delayq tests benchmarks examples

lint: $(STAMP)
	$(BIN)/ruff check delayq tests benchmarks examples
	$(BIN)/ruff format --check delayq tests benchmarks examples
	$(BIN)/mypy delayq

mypy: $(STAMP)
	$(BIN)/mypy delayq

test: $(STAMP)
	$(BIN)/pytest

# The fault-injection scenarios at full scale, with their ledger (make test runs them bounded).
chaos: $(STAMP)
	$(BIN)/python benchmarks/bench_chaos.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

demo-heartbeat: $(STAMP)
	$(BIN)/python examples/heartbeat_demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

bench-debounce: $(STAMP)
	$(BIN)/python benchmarks/bench_debounce.py

# The asyncio producer, bursts and sustained load with one Redis write per job.
bench-load: $(STAMP)
	$(BIN)/python benchmarks/bench_load.py

# A local 3-primary cluster next to one server: throughput, balance, lateness.
bench-cluster: $(STAMP)
	$(BIN)/python benchmarks/bench_cluster.py

# SIGKILL of a primary under load, repeated: lost and repeated timers, outage.
bench-failover: $(STAMP)
	$(BIN)/python benchmarks/bench_failover.py

bench-replicas: $(STAMP)
	$(BIN)/python benchmarks/bench_replicas.py

bench-results: $(STAMP)
	$(BIN)/python benchmarks/bench_results.py

# Memory of one process awaiting 100,000 outcomes in batches, then 10,000 waiters at once.
bench-waiters: $(STAMP)
	$(BIN)/python benchmarks/bench_waiters.py

bench-limits: $(STAMP)
	$(BIN)/python benchmarks/bench_limits.py

bench-queues: $(STAMP)
	$(BIN)/python benchmarks/bench_queues.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist
