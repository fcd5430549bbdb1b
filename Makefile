# Two commands on a fresh machine: `make demo` (the main job on an embedded local Ray with demo data)
# and `make test` (the whole suite). Each creates/refreshes .venv by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# .ci/setup_venv.sh prints one line per install step; it installs the torch CUDA build only where an NVIDIA
# GPU is present, the CPU wheel otherwise (from the configured indexes if they offer one, else the PyTorch CPU
# index). torchvision is not used anywhere (no CPU build exists).

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml .ci/setup_venv.sh
	PY=$(PY) VENV=$(VENV) bash .ci/setup_venv.sh
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
	$(BIN)/python bench/bench_train_input.py
	$(BIN)/python bench/bench_dataset.py
	$(BIN)/python bench/bench_recognize.py
	$(BIN)/python bench/bench_ensemble.py

clean:
	rm -rf $(VENV)
