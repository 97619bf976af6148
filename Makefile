# The front door. Every target sets itself up: venv, install, data.
PY      := .venv/bin/python
PIP     := .venv/bin/pip -q
PROFILE ?= cpu
# experiments run at once by reproduce; each process then gets one torch thread
JOBS    ?= 2
STAMP   := .venv/.installed

.PHONY: install data test reproduce bench clean

install: $(STAMP)

# Re-install only when the dependency list or the pins change (idempotent).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

data: install
	$(PY) scripts/fetch_data.py --root data

# CPU only, offline, fixture data made by the tests. Two workers with one torch thread each: more
# threads than cores makes torch spin against itself (measured ~20x slower).
test: install
	OMP_NUM_THREADS=1 WANDB_MODE=disabled HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 CUDA_VISIBLE_DEVICES= \
		$(PY) -m pytest -n 2 tests

reproduce: install data
	WANDB_MODE=disabled $(PY) scripts/reproduce.py --profile $(PROFILE) --jobs $(JOBS)

bench: install
	$(PY) scripts/bench_training.py
	$(PY) scripts/bench_decompose.py
	$(PY) scripts/bench_lm.py
	$(PY) scripts/bench_sae_features.py
	$(PY) scripts/bench_similarity.py

clean:
	rm -rf runs outputs multirun .pytest_cache
