# The two commands: `make run` (the app with demo data, nothing else needed) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run run-stripe test install install-dev services lint typecheck pytest demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

# Development settings on SQLite with eager tasks; the demo logins are printed by seed_demo.
run: install
	DEBUG=true DATABASE_URL= REDIS_URL= $(BIN)/python manage.py migrate --noinput
	DEBUG=true DATABASE_URL= REDIS_URL= $(BIN)/python manage.py seed_demo
	DEBUG=true DATABASE_URL= REDIS_URL= $(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

# The same, with the bundled fake Stripe server, so the Stripe side of the demo works offline too.
run-stripe: install
	bash scripts/run_with_fake_stripe.sh

services:
	@bash scripts/ensure_services.sh

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy billing_app customers plans usage

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
pytest: install-dev services
	$(BIN)/pytest -q --create-db; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$status

# Last, the demo data is built on PostgreSQL through the same services and the ledger checked.
CI_DATABASE_URL := postgres://postgres@127.0.0.1:5432/billing_ci
test: install-dev services lint typecheck pytest
	psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS billing_ci" -c "CREATE DATABASE billing_ci"
	DATABASE_URL=$(CI_DATABASE_URL) DEBUG=true $(BIN)/python manage.py migrate --noinput -v0
	DATABASE_URL=$(CI_DATABASE_URL) DEBUG=true $(BIN)/python manage.py seed_demo
	DATABASE_URL=$(CI_DATABASE_URL) DEBUG=true $(BIN)/python manage.py ledger_check

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles tests/artifacts
