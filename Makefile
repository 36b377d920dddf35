# labdock: `make run` serves the hub; `make test` installs and runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test bench install system-deps images lint typecheck test-fake pytest pytest-postgres clean-test

run: install
	@scripts/system-deps.sh run
	$(MAKE) images
	$(BIN)/labdock serve

test: system-deps install lint typecheck test-fake images pytest pytest-postgres

bench: install images
	$(BIN)/python bench/run.py

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "labdock needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

system-deps:
	@scripts/system-deps.sh

images: install
	$(BIN)/labdock images build

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy --strict hub/

# Every test that needs no engine, run with none reachable (tests/conftest.py marks the
# others `docker`): keeps the fake backend's tests, and the pure ones, engine-free.
test-fake: install
	DOCKER_HOST=unix:///nonexistent $(BIN)/pytest -m "not docker"

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

pytest-postgres: install
	scripts/with-postgres.sh $(BIN)/pytest $(PYTEST_ARGS)

# Remove anything a killed test run left on the engine.
clean-test:
	-docker ps -aq --filter label=labdock.test=1 | xargs -r docker rm -f
	-docker volume ls -q --filter label=labdock.test=1 | xargs -r docker volume rm -f
	-docker network ls -q --filter label=labdock.test=1 | xargs -r docker network rm
