"""Push a BitNet checkpoint folder to the Hugging Face Hub with its model card.

    python examples/push_to_hub.py CHECKPOINT_DIR NAMESPACE/NAME [--base-model Qwen/Qwen3-0.6B] [--dry-run]

--dry-run prints the model card and the files a push would upload, and touches no network. Without it the folder
is pushed as is (weights, config, tokenizer, modeling code, records, card); with --from-model the checkpoint is
loaded and pushed with transformers' own idiom, ``model.push_to_hub``, which bitnet-hf gives the same card (the
model's files only: no tokenizer, no records). Both need a token: `hf auth login` or HF_TOKEN.
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM

# Importing bitnet_hf (here through bitnet_hf.hub) registers the BitNet model types with the Auto classes.
from bitnet_hf.hub import card_for_upload, push_checkpoint, upload_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="BitNet checkpoint folder (training or packed)")
    parser.add_argument("repo_id", help="Hub repository, namespace/name")
    parser.add_argument("--base-model", help="Hub id of the full-precision model it was made from")
    parser.add_argument("--dry-run", action="store_true", help="print the card and the upload plan; no network")
    parser.add_argument("--from-model", action="store_true", help="load the model and call model.push_to_hub")
    args = parser.parse_args(argv)

    if args.dry_run:
        print(card_for_upload(args.checkpoint, repo_id=args.repo_id, base_model=args.base_model))
        print("Files a push uploads:")
        for path in upload_plan(args.checkpoint):
            print(f"  {path.as_posix()}")
        return 0
    if args.from_model:
        model = AutoModelForCausalLM.from_pretrained(args.checkpoint)
        url = model.push_to_hub(args.repo_id, base_model=args.base_model)
    else:
        url = push_checkpoint(args.checkpoint, args.repo_id, base_model=args.base_model)
    print(f"pushed: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
