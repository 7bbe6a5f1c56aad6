# Two entry points for a newcomer: `make demo` (the station on simulated devices) and `make test`.
# Everything else here is what those two need, plus checks CI runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# /bin/sh is dash on Debian: no /dev/tcp, so ask Python whether the broker answers.
BROKER_UP := $(PYTHON) -c "import socket; socket.create_connection(('127.0.0.1', 1883), 2).close()" 2>/dev/null

.PHONY: demo test check lint vermin check-py38 system-deps soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[runtime,train,dev,plant]'
	touch $@

# System packages the tests talk to for real (a Mosquitto broker; systemd-analyze for the unit checks).
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto; }
	@command -v systemd-analyze >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd; }
	@command -v shellcheck >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck; }
	@# The plant service's tests: a real headless browser and a PDF reader (PostgreSQL runs on the machine).
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	@command -v pdftotext >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q poppler-utils; }
	@$(BROKER_UP) || { echo "starting Mosquitto on 127.0.0.1:1883"; mosquitto -d -c /etc/mosquitto/mosquitto.conf; sleep 1; \
	  $(BROKER_UP) || { echo "Mosquitto did not start on 127.0.0.1:1883: see journalctl -u mosquitto or run mosquitto -v" >&2; exit 1; }; }

demo: $(STAMP) system-deps
	$(BIN)/isic-station demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check firmware_py drivers models_om plant tests

# The code that runs on the board must run on Python 3.8.
vermin: $(STAMP)
	$(BIN)/vermin --no-tips --violations --eval-annotations -t=3.8- firmware_py drivers

# The board's install (runtime extra only, no torch/scikit-learn) on a real Python 3.8.
check-py38:
	.ci/check-py38

check: lint vermin check-py38

soak: $(STAMP) system-deps
	$(BIN)/python -m pytest -m soak -s

clean:
	rm -rf $(VENV) build *.egg-info
