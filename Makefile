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
	bash .ci/test_tools.sh
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q tests

RES := bench/results

bench: $(STAMP)  # the README's Speed figures, each line appended to bench/results/ (mmaction2: bash bench/setup_mmaction2_venv.sh once)
	$(BIN)/python bench/bench_pipeline.py --feats b,j+b+jm+bm --repeats 7 --out $(RES)/pipeline.jsonl
	$(BIN)/python bench/bench_train_step.py --batches 16 --repeats 5 --steps 1 --eager-ops --bf16 --allocator tcmalloc --out $(RES)/train_step.jsonl
	$(BIN)/python bench/bench_train_step.py --batches 64 --repeats 5 --steps 1 --eager-ops --bf16 --allocator tcmalloc --out $(RES)/train_step.jsonl
	$(BIN)/python bench/bench_train_memory.py --allocator tcmalloc --out $(RES)/train_memory.jsonl
	$(BIN)/python bench/bench_train_roofline.py --out $(RES)/train_roofline.jsonl
	$(BIN)/python bench/bench_train_input.py --feats j,b,jm,bm --repeats 7 --out $(RES)/train_input.jsonl
	$(BIN)/python bench/bench_train_input.py --feats b --repeats 7 --out $(RES)/train_input.jsonl
	$(BIN)/python bench/bench_train_loader.py --out $(RES)/train_loader.jsonl
	$(BIN)/python bench/bench_train_loader.py --pipeline-device cpu --out $(RES)/train_loader.jsonl
	$(BIN)/python bench/count_step_ops.py --out $(RES)/step_ops.jsonl
	$(BIN)/python bench/bench_recognize.py --runs 7
	-flock /tmp/ray_tests.lock $(BIN)/python bench/bench_extract.py --repeats 7  # '-': rtmlib is optional; the rest still runs
	$(BIN)/python bench/bench_dino_pose.py --out $(RES)/dino_pose.jsonl
	flock /tmp/ray_tests.lock $(BIN)/python bench/bench_dino_job.py --out $(RES)/dino_job.jsonl
	$(BIN)/python bench/bench_dataset.py --out $(RES)/dataset.jsonl
	$(BIN)/python bench/bench_train.py --out $(RES)/train.jsonl
	$(BIN)/python bench/bench_ensemble.py

clean:
	rm -rf $(VENV)
