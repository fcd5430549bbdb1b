# Two commands on a fresh machine: `make demo` (the main job on an embedded local Ray with demo data)
# and `make test` (the whole suite). Each creates/refreshes .venv by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch: the CUDA build only where an NVIDIA GPU is present; otherwise the CPU wheel (never a CUDA
# download on a CPU machine). torchvision is not used anywhere (no CPU build exists).
TORCH_INDEX := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
	&& echo "" || echo "--extra-index-url https://download.pytorch.org/whl/cpu --retries 1 --timeout 20")

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" $(TORCH_INDEX)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python rayjobs/tune_fight.py

test: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q tests

bench: $(STAMP)  # mmaction2 comparisons need `bash bench/setup_mmaction2_venv.sh` once
	$(BIN)/python bench/bench_pipeline.py --feats all
	$(BIN)/python bench/bench_train_step.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_extract.py
	$(BIN)/python bench/bench_dino_pose.py

clean:
	rm -rf $(VENV)
