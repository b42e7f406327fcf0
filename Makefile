# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := adapters,s3,openlineage,statsd,dev
# Debian packages the tests need, as CHECK_PATH:PACKAGE (scripts/system_packages.sh installs them as root).
TEST_SYSTEM_PACKAGES := /usr/lib/postgresql/15/bin/initdb:postgresql-15 /usr/bin/redis-server:redis-server \
	/usr/bin/chromium:chromium
# Every test run ends with its 25 slowest tests; `make test PYTEST_ARGS=...` adds options (a later --durations wins).
override PYTEST_ARGS := --durations=25 $(PYTEST_ARGS)

.PHONY: install system-packages demo test test-min lint typecheck lock lock-min clean bench

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

system-packages:
	@bash scripts/system_packages.sh $(TEST_SYSTEM_PACKAGES)

demo: install
	@bash examples/demo.sh

# The unit and integration tiers run in TEST_WORKERS parallel workers, then the deployment tier alone.
TEST_WORKERS ?= 3
test: install system-packages
	bash scripts/run_tests.sh $(BIN)/python $(TEST_WORKERS) $(PYTEST_ARGS)

# The unit suite against the minimum pair (requirements/constraints-min.txt: oldest declared Airflow and
# dbt-core) in its own virtualenv, .venv-min.
MIN_VENV := .venv-min
MIN_EXTRAS := duckdb,postgres,s3,openlineage,statsd,dev
MIN_STAMP := $(MIN_VENV)/.installed
$(MIN_STAMP): pyproject.toml requirements/constraints-min.txt
	@test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade "pip>=23.2"
	$(MIN_VENV)/bin/python -m pip install --quiet -c requirements/constraints-min.txt -e ".[$(MIN_EXTRAS)]"
	@touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist worksteal tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests scripts examples bench
	$(BIN)/ruff format --check src tests scripts examples bench

typecheck: install
	$(BIN)/mypy

# Measure the hook against plain dbt (about 25 minutes on 2 cores), then deferrable mode (about 6 more;
# bench/deferrable.py), worker-slot time under a real deployment with the local and the S3 run channel
# (bench/worker_slot.py), 500 triggers polling the run channel (bench/channel_poll.py, about 5 more) and the
# 10,000-node run report built and opened in Chromium (bench/run_report.py, about 2 more), DbtTaskGroup against
# astronomer-cosmos in cosmos's own virtualenv, bench/.work/cosmos-venv (bench/task_graph.py, about 35 more),
# a 500-model DbtDag on a real deployment against plain dbt build (bench/task_graph_deployment.py),
# triggerer CPU per node task (bench/node_triggers.py, about 2 more), first and warm task starts with the
# 1,000-model project from S3 and git (bench/remote_project.py, about 4 more),
# and rewrite docs/benchmarks.md.
bench: install
	$(BIN)/python bench/run_bench.py $(BENCH_ARGS)

# Regenerate the lock after changing dependencies in pyproject.toml: resolves the declared extras in a fresh
# throwaway venv (never .venv), constrained by the current lock; `make lock LOCK_ARGS=--upgrade` drops the pins.
lock:
	bash scripts/lock.sh $(PYTHON) $(EXTRAS) $(LOCK_ARGS)

# The minimum lock (requirements/constraints-min.txt) from requirements/min.in and pyproject.toml.
lock-min:
	bash scripts/lock.sh $(PYTHON) $(MIN_EXTRAS) --min

clean:
	rm -rf $(VENV) $(MIN_VENV) .airflow .pytest_cache .mypy_cache .ruff_cache
