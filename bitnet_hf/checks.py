"""Checks of what a command is given, run before any model is loaded or anything is written: each failure is a
``ValueError`` / ``FileNotFoundError`` / ``FileExistsError`` / ``PermissionError`` whose message names the problem
and the fix (the CLI prints it and exits with status 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import AutoConfig
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME

from .models import CONFIG_CLASSES

BITNET_MODEL_TYPES = tuple(c.model_type for c in CONFIG_CLASSES)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_checkpoint(path: str | os.PathLike, what: str = "the checkpoint") -> dict[str, Any]:
    """A readable checkpoint folder: ``config.json`` that transformers accepts (valid JSON, a ``model_type``, fields
    of the right types) and safetensors weights whose headers read whole (a truncated file fails here, not in the
    middle of a load). Returns the config as a dict."""
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{what} {folder} is not a checkpoint folder (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}); save the model again with save_pretrained")
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ValueError(f"{config_file} has no model_type, so transformers cannot tell which model it is; save the "
                         "model with save_pretrained, or add the model_type of its family (e.g. \"llama\")")
    try:
        AutoConfig.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds here; all mean the same to a user
        raise ValueError(f"{config_file} is not a valid {config['model_type']!r} config: {error}") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        found = f" (it holds {', '.join(pickles)}: pickle, which bitnet-hf does not read)" if pickles else ""
        raise FileNotFoundError(f"{what} {folder} has no *.safetensors weights{found}; save the model with "
                                "save_pretrained, whose default is safetensors")
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is not a valid safetensors index ({error!r}); save the checkpoint again") from None
        missing = sorted(shards - {w.name for w in weights})
        if missing:
            raise FileNotFoundError(f"{folder} lacks the weight files {missing} that {index.name} names")
    for file in weights:
        try:
            with safe_open(file, "pt"):
                pass
        except SafetensorError as error:
            raise ValueError(f"{file} is not a readable safetensors file ({error}): it is truncated or corrupt; "
                             "save or copy the checkpoint again") from None
    return config


def check_trainable(path: str | os.PathLike, what: str = "the student") -> dict[str, Any]:
    """``check_checkpoint``, and a BitNet training checkpoint: not a packed deployment model (its weights cannot
    train), not a full-precision one (it would train without ternary weights)."""
    config = check_checkpoint(path, what)
    if config["model_type"] not in BITNET_MODEL_TYPES:
        raise ValueError(f"{what} {path} is a full-precision checkpoint (model_type {config['model_type']!r}), not a "
                         f"BitNet one; convert it first: bitnet-hf convert {path} OUT")
    if config.get("bitnet_packed"):
        raise ValueError(f"{what} {path} is a packed deployment checkpoint, whose ternary weights cannot train; give "
                         "the training checkpoint it was packed from (bitnet-hf convert / pretrain / distill output)")
    return config


def check_same_vocabulary(student: dict[str, Any], teacher: dict[str, Any], names: tuple[str, str]) -> None:
    """Distillation compares logits token by token: the two configs (as ``check_checkpoint`` returns them) must have
    embeddings of the same number of rows. ``names``: how to call the student and the teacher in the message."""
    sizes = _vocab_size(student), _vocab_size(teacher)
    if None in sizes or sizes[0] != sizes[1]:
        raise ValueError(f"{names[1]} has {sizes[1]} embedding rows and {names[0]} {sizes[0]}; distillation compares "
                         "their logits token by token: pick a teacher of the student's family and size class (the "
                         "model it was converted from is one)")


def _vocab_size(config: dict[str, Any]) -> int | None:
    return config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether the folder holds tokenizer files (``AutoTokenizer`` builds an empty tokenizer for one without)."""
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def check_tokenizer(path: str | os.PathLike, what: str = "the checkpoint") -> None:
    if not has_tokenizer(path):
        raise FileNotFoundError(f"{what} {path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save one into it "
                                "with tokenizer.save_pretrained (convert and pack copy the source's tokenizer along)")


def check_output_folder(path: str | os.PathLike, option: str = "the output folder") -> Path:
    """``path`` can become a folder that this process writes into: not a file, and its nearest existing folder
    writable (tried by creating and removing a file, which also catches read-only file systems)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{option} {path} is a file; give a folder path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    probe = existing / f".bitnet-hf-write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"{option} {path}: cannot write in {existing} ({error.strerror}); choose a folder you "
                              "can write to") from None
    return path
