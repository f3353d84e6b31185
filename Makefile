# make demo: end-to-end demo on images shipped with stardist and scikit-image.
# make test: the test suite (real data from ../shared/data or $HCCBIO_SHARED_DATA).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# TensorFlow: the CPU build unless a CUDA GPU is visible (nvidia-smi answers).
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet "tensorflow[and-cuda]>=2.15"; \
	else \
		$(PY) -m pip install --quiet "tensorflow-cpu>=2.15"; \
	fi
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m integration.demo --out demo_out

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf demo_out demo_data .pytest_cache
