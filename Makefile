# make demo: set up .venv and run the demo experiment offline on the bundled data:
# the search picks the learning rate, training and pruning use it (main_train.py says so).
# make test: set up .venv with the test tools and run the whole test suite; lists what it skipped and why.
# make docs: run the demo from scratch in output/docs-demo/ and regenerate the README's figure and the
#            search table (docs/) from it, and refresh the pages that quote them (README.md, docs/*.md).
# make reproduce CONFIGS=DIR: train, prune and compare every config of a folder.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test

.PHONY: demo test bench docs reproduce

CONFIGS ?= config/demo

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

# make reproduce CONFIGS=config/ex1-fmnist: train, prune and compare every config of a folder.
reproduce: $(INSTALLED)
	$(PY) -m src.reproduce $(CONFIGS)

test: $(TEST_INSTALLED)
	$(PY) -m pytest -q -rs --durations=15 tests

bench: $(INSTALLED)
	$(PY) bench/train_speed.py
	$(PY) bench/prune_speed.py
	$(PY) bench/export_latency.py
	$(PY) bench/tp_importance_speed.py
	$(PY) bench/tp_speed_table.py
	$(PY) bench/tp_recording_memory.py

# The scratch folder links the sources in, so the demo runs exactly as `make demo` does, paths
# included, but starts from no models and no results.
DOCS_RUN := output/docs-demo
DOCS_SOURCES := config data cka_prune src main_search.py main_train.py main_prune.py requirements.txt Makefile

docs: $(INSTALLED)
	rm -rf $(DOCS_RUN)
	mkdir -p $(DOCS_RUN)
	ln -s $(addprefix $(CURDIR)/,$(DOCS_SOURCES)) $(DOCS_RUN)/
	$(MAKE) -C $(DOCS_RUN) demo VENV=$(abspath $(VENV))
	cp $(DOCS_RUN)/output/report/demo-cka_vs_demo-l1/accuracy.png docs/demo-accuracy.png
	cd $(DOCS_RUN) && $(abspath $(PY)) main_search.py config/demo/cka.json > $(CURDIR)/docs/demo-search.txt
	$(PY) scripts/quote_docs.py
