"""Stage 1 of BitDistill (full-precision checkpoint -> BitNet training model) and the deployment packing.

* :func:`convert_to_bitnet` copies every weight of a full-precision transformers model into the BitNet class of its
  family; the only new parameters are the SubLN gains (ones, or calibrated with :func:`calibrate_subln`).
* :func:`pack_bitnet` turns a BitNet training model into the deployment model: ternary weights packed 4 per byte
  with one scale per tensor, every other tensor in bf16.
* :func:`save_checkpoint` writes either atomically (a temporary folder renamed into place);
  :func:`save_trained_model` does the same for a model at the end of training.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer
from transformers.trainer import TRAINER_STATE_NAME

from .models import BITNET_CLASS_FOR, CONFIG_CLASSES
from .models.base import SUBLN_PLACEMENTS, BitNetConfigMixin
from .models.layers import BitLinear, PackedBitLinear
from .awq import awq_scale
from .gptq import gptq_round
from .models.quantization import WEIGHT_SCHEMES, WeightScheme

# Config keys that describe the source checkpoint rather than the model, dropped when building a BitNet config.
_SOURCE_ONLY_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "dtype")

Batch = Mapping[str, torch.Tensor]


def supported_model_types() -> list[str]:
    """The full-precision ``model_type`` values that :func:`convert_to_bitnet` accepts."""
    return sorted({fp_class.config_class.model_type for fp_class in BITNET_CLASS_FOR})


def convert_to_bitnet(
    model: PreTrainedModel | str | os.PathLike,
    *,
    subln: str = "paper",
    quantize: bool = True,
    calibration_batches: Iterable[Batch] | None = None,
    dtype: torch.dtype | None = None,
    weight_scale: str = "tensor",
    group_size: int = 0,
    weight_scheme: str = "absmean",
) -> PreTrainedModel:
    """Convert a full-precision transformers model into its BitNet counterpart (BitDistill stage 1).

    Args:
        model: a Qwen3 / Qwen2 / Llama / Gemma 3 text model (``*Model``, ``*ForCausalLM`` or
            ``*ForSequenceClassification``), or a path to one saved with ``save_pretrained``.
        subln: SubLN placement, ``"paper"`` (attention output and FFN down projections), ``"all"`` or ``"none"``.
        quantize: ``False`` builds the model with both quantizers off (checks, calibration studies).
        calibration_batches: model inputs (``input_ids``, optional ``attention_mask``) to set the SubLN gains from,
            so that the un-quantized converted model stays close to the original (see :func:`calibrate_subln`).
            ``None`` leaves the gains at one.
        dtype: dtype to load a path in (default float32, the usual dtype of latent training weights); a model
            instance keeps its own.
        weight_scale / group_size: the ternary weights' scales (``WeightScheme``): ``"tensor"`` (the paper's),
            ``"row"``, or ``"group"`` of ``group_size`` input columns (Block-Quant); recorded in the config.
        weight_scheme: how the initial ternary values are chosen: ``"absmean"`` rounding of each weight (the
            paper's), ``"gptq"`` rounding with error compensation from ``calibration_batches``
            (:mod:`bitnet_hf.gptq`; rewrites the latent weights) or ``"awq"`` activation-aware channel scaling
            from them, folded into the norms' gains (:mod:`bitnet_hf.awq`); recorded in the config.

    Returns:
        The BitNet model. It shares its weight tensors with ``model`` when given an instance (no copy).
    """
    if subln not in SUBLN_PLACEMENTS:
        raise ValueError(f"subln={subln!r} is not a SubLN placement; use one of {SUBLN_PLACEMENTS}")
    scheme = WeightScheme(weight_scale, group_size)  # a bad layout is an error before the model loads
    if weight_scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"weight scheme {weight_scheme!r} is not one of {', '.join(WEIGHT_SCHEMES)}")
    if weight_scheme != "absmean":
        if calibration_batches is None or not quantize:
            raise ValueError(f"the {weight_scheme} weight scheme needs calibration_batches (text to compute each "
                             "layer's input statistics from; --calibration-data on the command line) and "
                             "quantize=True")
        calibration_batches = list(calibration_batches)  # read twice: SubLN gains, then the Hessians
    if scheme.scale == "group":
        check_scheme(model.config if isinstance(model, PreTrainedModel) else AutoConfig.from_pretrained(model), scheme)
    if not isinstance(model, PreTrainedModel):
        model = _load_full_precision(model, dtype or torch.float32)
    bitnet_cls = _bitnet_class_for(model)

    fields = {k: v for k, v in model.config.to_dict().items() if k not in _SOURCE_ONLY_KEYS}
    config = bitnet_cls.config_class(**fields, bitnet_subln=subln, bitnet_quantize=quantize,
                                     bitnet_weight_scale=weight_scale, bitnet_group_size=group_size,
                                     bitnet_weight_scheme=weight_scheme)
    config._attn_implementation = model.config._attn_implementation
    with torch.device("meta"):
        skeleton = bitnet_cls(config)

    new_params = {f"{name}.sub_norm.weight" for name, m in skeleton.named_modules()
                  if isinstance(m, BitLinear) and m.sub_norm is not None}
    gains = {}
    if calibration_batches is not None:
        gains = calibrate_subln(model, [k.removesuffix(".sub_norm.weight") for k in sorted(new_params)],
                                calibration_batches, eps=config.rms_norm_eps)
    bitnet = _fill(skeleton, model.state_dict(), model, new_params)
    with torch.no_grad():
        for name, gain in gains.items():
            bitnet.get_submodule(name).sub_norm.weight.copy_(gain)
    if weight_scheme != "absmean":
        {"gptq": gptq_round, "awq": awq_scale}[weight_scheme](bitnet, calibration_batches)
    if getattr(model, "generation_config", None) is not None:  # classifiers have none
        bitnet.generation_config = model.generation_config
    bitnet.train(model.training)
    return bitnet


def projection_widths(config: transformers.PretrainedConfig) -> dict[str, int]:
    """The input widths of a model's decoder projections, from its config: q/k/v and gate/up read
    ``hidden_size``, o_proj the attention features, down_proj ``intermediate_size``."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(config, "num_attention_heads", 0) * (getattr(config, "head_dim", None) or (
        config.hidden_size // max(1, getattr(config, "num_attention_heads", 1))))
    return {"q/k/v_proj, gate/up_proj": config.hidden_size, "o_proj": heads,
            "down_proj": getattr(config, "intermediate_size", config.hidden_size)}


def check_scheme(config: transformers.PretrainedConfig, scheme: WeightScheme) -> None:
    """A ``ValueError`` if ``scheme``'s groups do not divide the input width of every decoder projection of a
    model with ``config``."""
    for name, width in projection_widths(config).items():
        scheme.check(width, name)


def calibrate_subln(
    model: PreTrainedModel, linear_names: list[str], batches: Iterable[Batch], *, eps: float
) -> dict[str, torch.Tensor]:
    """SubLN gains that keep ``SubLN(x) = g * x / rms(x)`` close to ``x`` at each linear in ``linear_names``.

    ``SubLN(x)`` equals ``x`` exactly when ``g = rms(x)``, a per-token value that no gain can store. We set every
    channel's gain to the median per-token RMS of the linear's input, over the real (non-padding) tokens of
    ``batches`` run through the full-precision ``model``: a typical token passes through unchanged in scale. The
    median is robust to the few tokens with massive activations (attention sinks) that dominate a least-squares
    fit; on SmolLM2-135M it also beats per-channel fits (``benchmarks/subln_calibration.py``). All layers are
    calibrated on the original model's activations in one pass.
    """
    rms: dict[str, list[torch.Tensor]] = {name: [] for name in linear_names}
    mask: list[torch.Tensor | None] = [None]

    def hook_for(name: str):
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float()
            if mask[0] is not None:
                x = x[mask[0]]
            rms[name].append(torch.sqrt(x.reshape(-1, x.shape[-1]).pow(2).mean(-1) + eps))
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in linear_names]
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="Calibrating SubLN", unit="batch"):
                attention_mask = batch.get("attention_mask")
                mask[0] = None if attention_mask is None else attention_mask.bool()
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    if any(not values for values in rms.values()):
        raise ValueError("calibration_batches was empty: give at least one batch of model inputs")
    gains = {}
    for name, values in rms.items():
        width = model.get_submodule(name).in_features
        gains[name] = torch.cat(values).median().expand(width).clone()
    return gains


def pack_bitnet(model: PreTrainedModel, *, dtype: torch.dtype = torch.bfloat16) -> PreTrainedModel:
    """The deployment form of a BitNet training model.

    Every ``BitLinear`` becomes a ``PackedBitLinear`` holding its ternary weights packed 4 per byte and its scale;
    every other floating tensor (embeddings, ``lm_head``, norms, SubLN gains, biases) is cast to ``dtype``.
    """
    config = model.config
    if not isinstance(config, BitNetConfigMixin):
        raise TypeError(f"pack_bitnet expects a BitNet model, got {type(model).__name__}; convert it first with "
                        "convert_to_bitnet")
    if config.bitnet_packed:
        raise ValueError("this model is already packed")
    if not config.bitnet_quantize:
        raise ValueError("this model was built with bitnet_quantize=False; packing stores quantized weights, so "
                         "only a model that trains and runs quantized can be packed")
    packed_config = type(config).from_dict({**config.to_dict(), "bitnet_packed": True})
    packed_config._attn_implementation = config._attn_implementation
    with torch.device("meta"):
        skeleton = type(model)(packed_config)

    state = {}
    for name, module in model.named_modules():
        if isinstance(module, BitLinear):
            packed = PackedBitLinear.from_bitlinear(module, dtype)
            state.update({f"{name}.{key}": value for key, value in packed.state_dict().items()})
    for key, value in model.state_dict().items():
        if key not in state:
            state[key] = value.to(dtype) if value.is_floating_point() else value
    packed_model = _fill(skeleton, state, model, new_params=set())
    packed_model.config.dtype = dtype
    if getattr(model, "generation_config", None) is not None:
        packed_model.generation_config = model.generation_config
    return packed_model.eval()


def size_report(packed_model: PreTrainedModel) -> dict[str, int]:
    """Bytes of the packed ternary linear weights (uint8 + scales) against the same weights stored in bf16."""
    layers = [m for m in packed_model.modules() if isinstance(m, PackedBitLinear)]
    return {
        "linear_weights": sum(m.in_features * m.out_features for m in layers),
        "bf16_bytes": sum(2 * m.in_features * m.out_features for m in layers),
        "packed_bytes": sum(m.weight.numel() * m.weight.element_size()
                            + m.weight_scale.numel() * m.weight_scale.element_size() for m in layers),
    }


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early (before any expensive work) if ``path`` holds something and ``overwrite`` is not set."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output path")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; choose another output path or pass --overwrite "
                              "(overwrite=True in Python)")
    return path


def save_checkpoint(
    model: PreTrainedModel,
    path: str | os.PathLike,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    overwrite: bool = False,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) into a temporary sibling folder, then rename it into place.
    ``extra_files`` (name -> text) are written into the folder with it, so they land together.

    An interrupted save leaves ``path`` as it was: either absent, or the previous complete checkpoint.
    """
    path = check_output_dir(path, overwrite).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_temporary(path)
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _move_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def save_trained_model(trainer: Trainer, path: str | os.PathLike) -> Path:
    """``trainer.save_model`` (which gathers FSDP / ZeRO-3 shards; the main process writes, with the tokenizer)
    into a temporary sibling folder, then the main process renames it onto ``path``, replacing what was there.
    The Trainer's pickled ``training_args.bin`` is replaced by ``training_args.json``: no pickle in a final model.
    ``trainer_state.json`` (the log history) is written beside, so the log outlives the run's checkpoints."""
    path = Path(path).absolute()
    tmp = _fresh_temporary(path) if trainer.is_world_process_zero() else path.with_name(f".{path.name}.tmp")
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        (tmp / "training_args.bin").unlink(missing_ok=True)
        (tmp / "training_args.json").write_text(trainer.args.to_json_string())
        trainer.state.save_to_json(str(tmp / TRAINER_STATE_NAME))  # the training log, kept with the model
        _move_into_place(tmp, path)
    trainer.accelerator.wait_for_everyone()
    return path


def _fresh_temporary(path: Path) -> Path:
    """``.<name>.tmp`` beside ``path``, where a save is written before it is renamed onto ``path``. What a killed
    earlier save left beside ``path`` (that folder, ``.<name>.old``, or the ``.<name>.<random>.tmp`` of earlier
    versions) is removed first, so an interrupted save costs no disk space for longer than until the next one."""
    leftover = re.compile(rf"\.{re.escape(path.name)}(\.[A-Za-z0-9_]{{8}})?\.(tmp|old)")
    for stale in path.parent.iterdir():
        if stale.is_dir() and leftover.fullmatch(stale.name):
            shutil.rmtree(stale)
    return path.with_name(f".{path.name}.tmp")


def _move_into_place(tmp: Path, path: Path) -> None:
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def _load_full_precision(path: str | os.PathLike, dtype: torch.dtype) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(path)
    if isinstance(config, CONFIG_CLASSES):
        raise ValueError(f"{path} is already a BitNet checkpoint (model_type {config.model_type!r})")
    architecture = (config.architectures or [""])[0]
    model_class = getattr(transformers, architecture, None)
    if model_class not in BITNET_CLASS_FOR:
        # No or unknown architecture recorded: a causal LM of a supported family is the common case.
        model_class = transformers.AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class not in BITNET_CLASS_FOR:
        raise ValueError(f"{path}: model_type {config.model_type!r} ({architecture or 'no architecture'}) is not "
                         f"supported; bitnet-hf converts {', '.join(supported_model_types())}")
    return model_class.from_pretrained(path, dtype=dtype)


def _bitnet_class_for(model: PreTrainedModel) -> type[PreTrainedModel]:
    if isinstance(model.config, CONFIG_CLASSES):
        raise ValueError(f"{type(model).__name__} is already a BitNet model")
    try:
        return BITNET_CLASS_FOR[type(model)]
    except KeyError:
        names = ", ".join(sorted(cls.__name__ for cls in BITNET_CLASS_FOR))
        raise ValueError(f"cannot convert {type(model).__name__}: bitnet-hf converts {names}") from None


def _fill(skeleton: PreTrainedModel, state: dict[str, torch.Tensor], source: PreTrainedModel,
          new_params: set[str]) -> PreTrainedModel:
    """Give a model built on the meta device the tensors of ``state`` (by assignment, no copy) and the
    non-persistent buffers of ``source``; ``new_params`` (missing from ``state``) are created by ``_init_weights``."""
    missing, unexpected = skeleton.load_state_dict(state, strict=False, assign=True)
    tied = set(skeleton.all_tied_weights_keys)
    if unexpected or set(missing) - new_params - tied:
        raise RuntimeError(f"weights do not line up: unexpected {sorted(unexpected)[:5]}, "
                           f"missing {sorted(set(missing) - new_params - tied)[:5]}")
    for name, buffer in source.named_buffers():
        module_name, _, leaf = name.rpartition(".")
        module = skeleton.get_submodule(module_name)
        if leaf in module._buffers and module._buffers[leaf].is_meta:
            module._buffers[leaf] = buffer
    device = next(p for p in source.parameters()).device
    for name in new_params:
        module_name, _, leaf = name.rpartition(".")
        module = skeleton.get_submodule(module_name)
        module._parameters[leaf] = torch.nn.Parameter(torch.empty_like(module._parameters[leaf], device=device))
        skeleton._init_weights(module)
    skeleton.tie_weights()
    still_meta = [n for n, t in [*skeleton.named_parameters(), *skeleton.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"tensors left uninitialised after conversion: {still_meta[:5]}")
    return skeleton
