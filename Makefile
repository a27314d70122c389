# clvr: every target sets itself up from nothing but Python 3.10+.
#   make demo   -- install, then the whole job on the embedded digits: shard, pre-train SimCLR,
#                  evaluate against random-init and supervised baselines, print the table
#                  (make demo METHOD=byol for another method; make demo-video / demo-objects /
#                  demo-captions for the other demo sets)
#   make test   -- install, then run the test suite (what CI runs)
#   make bench  -- install, then run the benchmarks in bench/
#   make bench-quality -- install, then bench/method_quality.py: every method on the digits, 3 seeds,
#                  against raw pixels, random init and supervised (about 2 hours on 2 cores)
#   make bench-defaults SEED=7 -- install, then bench/defaults_check.py: every method trained with
#                  `clvr train`'s defaults and scored with `clvr eval knn`, against bench-quality's mean
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, so the range in pyproject.toml is already satisfied and pip never pulls a
# multi-GB CUDA build. On a GPU machine: make setup TORCH_SPEC="torch==2.13.0" with your index.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.clvr-installed
DATA ?= data
RUNS ?= runs
METHOD ?=
DEMO_FLAGS := $(if $(METHOD),--method $(METHOD))

.PHONY: setup test demo demo-video demo-objects demo-captions demo-shards bench bench-quality bench-defaults clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/clvr demo digits --out $(RUNS)/demo-digits $(DEMO_FLAGS)

demo-video: setup
	$(VENV)/bin/clvr demo digits-video --out $(RUNS)/demo-digits-video $(DEMO_FLAGS)

demo-objects: setup
	$(VENV)/bin/clvr demo digits-objects --out $(RUNS)/demo-digits-objects $(DEMO_FLAGS)

demo-captions: setup
	$(VENV)/bin/clvr demo digits-captions --out $(RUNS)/demo-digits-captions $(DEMO_FLAGS)

# the shards alone, verified, summarised and previewed
demo-shards: setup
	$(VENV)/bin/clvr shard demo digits $(DATA)/digits --overwrite --no-progress
	$(VENV)/bin/clvr shard verify $(DATA)/digits --no-progress
	$(VENV)/bin/clvr shard info $(DATA)/digits
	$(VENV)/bin/clvr shard preview $(DATA)/digits

bench: setup
	$(PY) bench/shard_throughput.py
	$(PY) bench/pipeline_throughput.py
	$(PY) bench/method_bookkeeping.py --size 32 --steps 2 --repeats 10
	$(PY) bench/feature_extraction.py

bench-quality: setup
	$(PY) bench/method_quality.py $(BENCH_FLAGS)

SEED ?= 7
bench-defaults: setup
	$(PY) bench/defaults_check.py --seed $(SEED) $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) $(DATA) $(RUNS) bench/out .pytest_cache
