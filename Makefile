# make demo: set up .venv and run the demo experiment offline on the bundled data:
# the search picks the learning rate, training and pruning use it (main_train.py says so).
# make test: set up .venv with the test tools and run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test

.PHONY: demo test bench

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(TEST_INSTALLED): requirements-test.txt $(INSTALLED)
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

demo: $(INSTALLED)
	$(PY) main_search.py config/demo/cka.json
	$(PY) main_train.py config/demo/cka.json
	$(PY) main_prune.py config/demo/cka.json
	$(PY) main_prune.py config/demo/l1.json
	$(PY) -m src.report output/demo/cka output/demo/l1

test: $(TEST_INSTALLED)
	$(PY) -m pytest -q tests

bench: $(INSTALLED)
	$(PY) bench/train_speed.py
	$(PY) bench/prune_speed.py
	$(PY) bench/export_latency.py
