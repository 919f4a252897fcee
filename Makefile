# Two entry points a fresh machine needs: `make demo` (the main job: the bundled models on every
# task -> demo/) and `make test` (the suite).
# Both create .venv and install what they need; torch is pinned (2.13.0 is the local CPU wheel).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench quality clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[train,export,dev,eval,mrd,openvino]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/diffunfold demo --out demo --overwrite

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/run.py

# The bundled packages against strong classical baselines on held-out data (~25 min on 2 cores)
# -> bench/results/quality-*.md, .json, .png
quality: install
	$(PY) bench/quality.py samples/models/image-small samples/models/mri-small

clean:
	rm -rf $(VENV) .pytest_cache
