# The whole set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# make run: one node farming its own plots with its own timelord. The key and plots in
# $(RUN_DIR) serve every network; each network has its database, $(RUN_DIR)/<network>/node-data.
NETWORK ?= devnet
RUN_DIR ?= run
RPC_PORT ?= 127.0.0.1:8080
P2P_PORT ?= :9090
# make devnet: the three-node walk-through in the background (conf/devnet.sh; its ports
# move with DEVNET_RPC_A=.. DEVNET_P2P_A=.. and so on, read from the environment).
DEVNET_DIR ?= devnet

.PHONY: run test lint bench devnet devnet-stop clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	@mkdir -p $(RUN_DIR)
	@test -f $(RUN_DIR)/farmer.key || $(BIN)/archivas-wallet new --out $(RUN_DIR)/farmer.key
	@ls $(RUN_DIR)/plots/*.plot >/dev/null 2>&1 || \
		$(BIN)/archivas-farmer plot --size 18 --count 2 --path $(RUN_DIR)/plots --farmer-key $(RUN_DIR)/farmer.key
	@mkdir -p $(RUN_DIR)/$(NETWORK)
	@test ! -d $(RUN_DIR)/node-data || echo "note: $(RUN_DIR)/node-data is an older checkout's devnet database;" \
		"mv $(RUN_DIR)/node-data $(RUN_DIR)/devnet/node-data to keep it (docs/operations.md)"
	exec $(BIN)/archivas-node --network $(NETWORK) --db $(RUN_DIR)/$(NETWORK)/node-data \
		--rpc-port $(RPC_PORT) --p2p-port $(P2P_PORT) \
		--timelord --farm $(RUN_DIR)/plots --farmer-key $(RUN_DIR)/farmer.key

# make test: the unit suite (trial TestCases, pytest-twisted off), then the integration suite
# (real processes, session fixtures: tests/integration/conftest.py) with pytest-twisted on.
test: $(STAMP)
	$(BIN)/python -m pytest -q tests --ignore=tests/integration
	$(BIN)/python -m pytest -q -p twisted --reactor=default tests/integration

lint: $(STAMP)
	$(BIN)/ruff check archivas tests bench twisted
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/validation_throughput.py

devnet: $(STAMP)
	NETWORK=$(NETWORK) BIN=$(BIN) sh conf/devnet.sh start $(DEVNET_DIR)

devnet-stop:
	BIN=$(BIN) sh conf/devnet.sh stop $(DEVNET_DIR)

clean:
	rm -rf $(VENV) build *.egg-info
