# The two entry points of the README: `make demo` (main job) and `make test` (the test suite).
# Each creates .venv if missing and installs mgid into it, compiling csrc/ (nvcc for the CUDA
# kernels when the installed torch has CUDA), then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
export MAX_JOBS ?= 2
DEMO_OUT ?= runs/quick

STAMP := $(VENV)/.mgid-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h csrc/*.cuh)

.PHONY: install demo test bench clean

install: $(STAMP)

# torch and the build tools first, then an in-place (editable) build against exactly that torch:
# an isolated build would fetch a second torch just to compile against.
$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" setuptools wheel ninja
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,bench]"
	$(PY) -c "import mgid.ops as o; print('mgid build:', o.build_info())"
	touch $(STAMP)

# Train the quick recipe with the fast ops on the embedded default (loss and images/s on the progress bar),
# then de-rain the held-out sets with the shipped weights and with the model just trained, print
# PSNR/SSIM of the input, two baselines and both models, and write the comparison picture.
demo: install
	$(PY) train.py --config quick --out $(DEMO_OUT) --overwrite
	$(PY) -m mgid heldout --weights mgid/weights/mgid_embedded.safetensors $(DEMO_OUT)/checkpoints/last.safetensors \
		--names "shipped weights" "quick model (just trained)" --picture --out $(DEMO_OUT)/heldout

# Lint first (ruff, configured in pyproject.toml; clang-format on csrc/, configured in .clang-format), then the suite.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run --Werror csrc/*.cpp csrc/*.cu csrc/*.h csrc/*.cuh
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks.bench_ops

clean:
	rm -rf build mgid/_C*.so *.egg-info
