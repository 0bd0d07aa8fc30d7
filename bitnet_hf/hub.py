"""Model cards and Hub pushes for BitNet checkpoints.

* :func:`render_model_card` fills ``model_cards/bitnet_model_card.md`` (shipped as ``bitnet_hf/model_cards/``) from
  what a checkpoint folder records: ``config.json``, the safetensors files, ``training_args.json`` and
  ``bitnet_recipe.json`` (see :data:`RECIPE_FILE`).
* :func:`upload_plan` lists the files of a folder that a push uploads, and refuses folders without safetensors.
* :func:`card_for_upload` is the ``README.md`` a push uploads: the folder's own card, or the rendered one.
* :func:`push_checkpoint` (``bitnet-hf push``) uploads exactly those files and the card in one commit;
  :func:`push_model` does the same for a model in memory, behind ``model.push_to_hub`` of every BitNet model.

Nothing here writes into the checkpoint folder: the card goes to the Hub as ``README.md`` straight from memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import get_relative_import_files

from .distill.config import DistillOptions

# What the BitDistill pipeline records beside a model: {"base_model": Hub id, "license": the base model's license,
# "task": str, "teacher": str, "stages": [{"name": str, "hyperparameters": {name: value}}], "results": rows}.
# Every key is optional.
RECIPE_FILE = "bitnet_recipe.json"
TRAINING_ARGS_FILE = "training_args.json"
CARD_FILE = "README.md"
TEMPLATE_FILE = "bitnet_model_card.md"
# In every card we render; a README.md that carries it was made by us and is re-rendered, any other is the user's.
GENERATED_MARKER = "bitnet-hf model card"
TAGS = ("bitnet", "1.58-bit", "bitdistill", "ternary")
NO_TOKEN = "no Hugging Face token: run `hf auth login` or set HF_TOKEN, or pass --token (token= from Python)"

# Training arguments worth a row in the card, in this order (TrainingArguments, DistillOptions and BitDistillConfig
# names).
_TRAINING_KEYS = (
    "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm",
    "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16",
    "seed", *(f.name for f in fields(DistillOptions)), "loss_tokens", "max_length",
)
_CONFIG_FILES = ("config.json", "generation_config.json")
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Architecture suffix -> (Auto class, Hub pipeline tag).
_HEADS = {
    "ForCausalLM": ("AutoModelForCausalLM", "text-generation"),
    "ForSequenceClassification": ("AutoModelForSequenceClassification", "text-classification"),
    "Model": ("AutoModel", "feature-extraction"),
}

Results = str | Sequence[Mapping[str, Any]]


def render_model_card(
    checkpoint_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    results: Results | None = None,
    recipe: Mapping[str, Any] | None = None,
    license: str | None = None,
    tags: Iterable[str] = (),
) -> ModelCard:
    """The model card of a BitNet checkpoint folder.

    Args:
        checkpoint_dir: a folder saved by ``save_pretrained`` / ``bitnet_hf.save_checkpoint`` (training or packed).
        repo_id: the Hub repository the card is for; the load snippets use it (default: the folder's path).
        base_model: Hub id of the full-precision model it was made from (default: ``bitnet_recipe.json``'s
            ``base_model``, else ``config.json``'s ``_name_or_path`` when that is a ``namespace/name`` id).
        results: a Markdown table, or rows (dicts, e.g. ``{"method": "BitDistill", "accuracy": 0.914}``) that
            become one; default: ``bitnet_recipe.json``'s ``results``.
        recipe: used instead of the folder's ``bitnet_recipe.json`` (same keys, see :data:`RECIPE_FILE`).
        license: a Hub license id; default: the recipe's ``license`` (the base model's), else ``"other"``.
        tags: added to ``bitnet``, ``1.58-bit``, ``bitdistill``, ``ternary``.
    """
    folder = _checkpoint_folder(checkpoint_dir)
    config = json.loads((folder / "config.json").read_text())
    model_type = config.get("model_type", "")
    if not model_type.startswith("bitnet_"):
        raise ValueError(f"{folder} is not a BitNet checkpoint (model_type {model_type!r}); convert it first with "
                         "`bitnet-hf convert`")
    recipe = dict(recipe) if recipe is not None else _read_json(folder / RECIPE_FILE)
    if base_model is not None:
        _check_hub_id(base_model, "base_model")
    else:
        base_model = _as_hub_id(recipe.get("base_model")) or _as_hub_id(config.get("_name_or_path"))
    if results is None:
        results = recipe.get("results")
    architecture = (config.get("architectures") or [""])[0]
    auto_class, pipeline_tag = next((v for k, v in _HEADS.items() if architecture.endswith(k)), ("AutoModel", None))

    if license is not None:
        license_text = f"`{license}`."
    elif recipe.get("license"):
        license, license_text = recipe["license"], f"`{recipe['license']}`, the license of the base model."
    else:
        license = "other"
        license_text = ("Not recorded with this checkpoint: the license of the base model applies. Set it with "
                        "`license=` (`bitnet-hf push --license`).")

    metadata: dict[str, Any] = {}
    if base_model:
        metadata.update(base_model=base_model, base_model_relation="quantized")
    card_data = ModelCardData(library_name="transformers", license=license, pipeline_tag=pipeline_tag,
                              tags=list(dict.fromkeys([*TAGS, *tags])), **metadata)
    packed = bool(config.get("bitnet_packed"))
    dtype = config.get("dtype") or config.get("torch_dtype") or "unknown dtype"
    weights = sorted(folder.glob("*.safetensors"))
    return ModelCard.from_template(
        card_data,
        template_str=_template_text(),
        generated_marker=GENERATED_MARKER,
        model_name=repo_id.split("/")[-1] if repo_id else folder.name,
        repo_id=repo_id or str(folder),
        base_model=base_model,
        architecture=architecture or "unknown",
        model_type=model_type,
        auto_class=auto_class,
        task=recipe.get("task"),
        teacher=recipe.get("teacher"),
        subln=config.get("bitnet_subln", "paper"),
        format_name="packed deployment" if packed else "training",
        format_description=(
            f"packed for deployment: ternary weights 4 per byte with one scale per {_scale_text(config)}, other "
            f"tensors in {dtype}"
            if packed else f"training checkpoint: latent {dtype} weights and SubLN gains (pack it with "
            "`bitnet-hf pack` for deployment)"),
        hyperparameters=_hyperparameter_sections(recipe, _read_json(folder / TRAINING_ARGS_FILE)),
        results_table=_results_table(results) if results else None,
        size_mib=f"{sum(f.stat().st_size for f in weights) / 2**20:.2f}",
        weight_files=len(weights),
        license_text=license_text,
    )


def _scale_text(config: dict[str, Any]) -> str:
    scale = config.get("bitnet_weight_scale", "tensor")
    text = f"group of {config.get('bitnet_group_size')} input columns" if scale == "group" else scale
    scheme = {"gptq": " (ternary values initialised by GPTQ rounding at conversion)",
              "awq": " (input channels scaled by AWQ at conversion, folded into the norms)"}
    return text + scheme.get(config.get("bitnet_weight_scheme", "absmean"), "")


def upload_plan(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """The files a push of ``checkpoint_dir`` uploads, as paths in the repository (relative to the folder), sorted.

    Uploaded: the safetensors weights (and their index), ``config.json``, ``generation_config.json``, the tokenizer
    files, the modeling code that ``config.json``'s ``auto_map`` names (with the files it imports), ``RECIPE_FILE``,
    ``TRAINING_ARGS_FILE`` and ``README.md``, which is always in the plan: the folder's own card when it has one that
    bitnet-hf did not generate, else the rendered one. Everything else stays home: ``checkpoint-*`` and other
    subfolders, optimizer / scheduler / RNG states, ``trainer_state.json``, pickles (``*.bin``, ``*.pt``...), logs,
    temporary folders, stray scripts.

    Raises:
        FileNotFoundError: the folder has no ``config.json``.
        ValueError: no safetensors weights (naming the pickle weights found instead), a shard missing from the
            index, or a modeling file of ``auto_map`` missing.
    """
    folder = _checkpoint_folder(checkpoint_dir)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in _PICKLE_SUFFIXES)
        found = f"; it holds {', '.join(pickles)} (pickle), which bitnet-hf does not upload" if pickles else ""
        raise ValueError(f"{folder} has no *.safetensors weights{found}. Load the model and save it with "
                         "save_pretrained (safetensors is its default) or bitnet_hf.save_checkpoint, then push that")
    files = set(weights)
    for index in folder.glob("*.safetensors.index.json"):
        missing = sorted(set(json.loads(index.read_text())["weight_map"].values()) - {w.name for w in weights})
        if missing:
            raise ValueError(f"{index} lists shards that are not in the folder: {', '.join(missing)}")
        files.add(index)
    files.update(folder / n for n in (*_CONFIG_FILES, *_TOKENIZER_FILES, RECIPE_FILE, TRAINING_ARGS_FILE)
                 if (folder / n).is_file())
    files.update(folder.glob("additional_chat_templates/*.jinja"))
    files.update(_modeling_files(folder))
    return sorted({f.relative_to(folder) for f in files} | {Path(CARD_FILE)})


def push_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload BitNet model (bitnet-hf)",
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    results: Results | None = None,
    base_model: str | None = None,
    license: str | None = None,
    tags: Iterable[str] = (),
) -> str:
    """Upload a checkpoint folder to the Hub with its model card, in one commit; returns the repository's URL (the
    pull request's with ``create_pr``).

    Checked before any network access: ``repo_id`` (``name`` or ``namespace/name``), the folder (see
    :func:`upload_plan`), the card (see :func:`render_model_card`, which takes ``results``, ``base_model``,
    ``license`` and ``tags``) and the token (``token``, else the one of ``hf auth login`` or ``HF_TOKEN``).
    Then the repository is created if needed (``private``: ``None`` is the Hub's default), the branch
    ``revision`` too, and exactly the files of :func:`upload_plan` are committed. The folder is not modified.
    """
    _check_hub_id(repo_id, "repo_id")
    folder = _checkpoint_folder(checkpoint_dir)
    plan = upload_plan(folder)
    card = card_for_upload(folder, repo_id=repo_id, results=results, base_model=base_model, license=license,
                           tags=tags)
    token = token or get_token()
    if not token:
        raise ValueError(NO_TOKEN)

    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=p.as_posix(), path_or_fileobj=folder / p)
                  for p in plan if p != Path(CARD_FILE)]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode()))
    commit = api.create_commit(repo_url.repo_id, operations, commit_message=commit_message,
                               commit_description=commit_description, revision=revision, create_pr=create_pr)
    return commit.pr_url if create_pr else str(repo_url)


def push_model(
    model: PreTrainedModel,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    results: Results | None = None,
    base_model: str | None = None,
    license: str | None = None,
) -> str:
    """``model.push_to_hub`` of BitNet models: ``save_pretrained`` into a temporary folder, then
    :func:`push_checkpoint` with the BitNet card (``model.model_tags`` and ``tags`` added to its tags).

    Takes transformers' ``push_to_hub`` arguments (``token=True`` means the stored token) plus the card's
    ``results``, ``base_model`` and ``license``; returns the repository's URL rather than a ``CommitInfo``.
    """
    _check_hub_id(repo_id, "repo_id")
    if token is None or token is True:
        token = get_token()
    if not token:
        raise ValueError(NO_TOKEN)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        return push_checkpoint(tmp, repo_id, token=token, private=private,
                               commit_message=commit_message or "Upload BitNet model (bitnet-hf)",
                               commit_description=commit_description, revision=revision, create_pr=create_pr,
                               results=results, base_model=base_model, license=license,
                               tags=[*(model.model_tags or []), *(tags or [])])


def card_for_upload(folder: str | os.PathLike, **card_options: Any) -> str:
    """The ``README.md`` a push uploads: the folder's own when it has one that bitnet-hf did not generate (the
    user's card wins), else :func:`render_model_card` of the folder with ``card_options``."""
    readme = Path(folder) / CARD_FILE
    if readme.is_file() and GENERATED_MARKER not in (own := readme.read_text(encoding="utf-8")):
        return own
    return str(render_model_card(folder, **card_options))


def _checkpoint_folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json)")
    return folder


def _check_hub_id(value: str, what: str) -> None:
    try:
        validate_repo_id(value)
    except HFValidationError as error:
        raise ValueError(f"{what} {value!r} is not a Hub repository id (`name` or `namespace/name`): {error}") from None


def _as_hub_id(value: Any) -> str | None:
    """``value`` when it reads as a ``namespace/name`` Hub id (a recorded local path does not), else ``None``."""
    if not isinstance(value, str) or value.count("/") != 1:
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _template_text() -> str:
    # An installed wheel has the template in the package; a source checkout (or editable install) in the repo root.
    packaged = resources.files("bitnet_hf") / "model_cards" / TEMPLATE_FILE
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[1] / "model_cards" / TEMPLATE_FILE).read_text(encoding="utf-8")


def _modeling_files(folder: Path) -> set[Path]:
    """The modules ``config.json``'s ``auto_map`` names in this folder, with the same-folder files they import."""
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    references = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if r]
    files: set[Path] = set()
    for reference in references:
        if "--" in reference:  # code that lives in another Hub repository
            continue
        module = folder / f"{reference.rsplit('.', 1)[0]}.py"
        try:
            files.update([module, *(Path(f) for f in get_relative_import_files(module))])
        except FileNotFoundError as error:
            needed = "names" if Path(error.filename) == module else f"needs (through {module.name})"
            raise ValueError(f"config.json's auto_map {needed} {Path(error.filename).name}, which is not in {folder}; "
                             "save the model again with save_pretrained, which copies its modeling files") from None
    return files


def _hyperparameter_sections(recipe: Mapping[str, Any], training_args: Mapping[str, Any]) -> list[dict[str, Any]]:
    sections = [{"title": stage.get("name", f"Stage {i}"),
                 "rows": [(k, _cell(v)) for k, v in stage.get("hyperparameters", {}).items()]}
                for i, stage in enumerate(recipe.get("stages", []), 1)]
    rows = [(k, _cell(training_args[k])) for k in _TRAINING_KEYS if training_args.get(k) is not None]
    if rows:
        sections.append({"title": f"Last training run ({TRAINING_ARGS_FILE})", "rows": rows})
    return sections


def _results_table(results: Results) -> str:
    if isinstance(results, str):
        return results.strip()
    columns = list(dict.fromkeys(k for row in results for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in results]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}" if abs(value) < 1e-3 and value else f"{value:.4f}".rstrip("0").rstrip(".")
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_cell(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")
