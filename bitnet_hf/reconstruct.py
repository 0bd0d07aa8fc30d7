"""Block-wise reconstruction (BitDistill stage 1b, optional): after conversion, each decoder block of the BitNet
model is trained on its own to reproduce the full-precision block.

Block ``i`` of the student sees the inputs the full-precision model gives its block ``i`` on a calibration set of
token blocks, and its parameters (latent weights through the straight-through estimator, SubLN gains, norms) are
trained with Adam to minimise ``||student_i(x) - reference_i(x)||^2 / ||reference_i(x) - x||^2``, one block after
the other; the embedding and the head are left alone. Then the next block's inputs are the reference block's outputs:
every block learns on full-precision inputs, so blocks do not compound one another's errors while they train.

``reconstruct_blocks`` can save the student after each block into ``checkpoint_dir`` (atomically, with
``reconstruction.json``: the blocks done and their errors) and resumes from there; ``reconstruct_checkpoint`` does
it for a checkpoint folder (the ``bitnet-hf convert --reconstruct-steps`` and pipeline stage).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .models.base import BitNetConfigMixin

logger = logging.getLogger(__name__)

STATE_FILE = "reconstruction.json"


@dataclass(kw_only=True)
class ReconstructionOptions:
    """The budget of block-wise reconstruction (declared once: the CLI's ``convert --reconstruct-*`` flags and the
    pipeline's ``--reconstruct-*`` options are these fields).

    Args:
        reconstruct_steps: Adam steps per decoder block; 0 turns reconstruction off.
        reconstruct_learning_rate: Adam learning rate (cosine decay to 0 over each block's steps).
        reconstruct_batch_size: calibration sequences per step.
        reconstruct_sequences: calibration sequences (token blocks of ``reconstruct_sequence_length``), at least
            ``reconstruct_batch_size``.
        reconstruct_sequence_length: tokens per calibration sequence.
    """

    reconstruct_steps: int = field(default=0, metadata={
        "help": "block-wise reconstruction: Adam steps per decoder block (0: off)"})
    reconstruct_learning_rate: float = field(default=1e-3, metadata={"help": "learning rate of the reconstruction"})
    reconstruct_batch_size: int = field(default=2, metadata={"help": "calibration sequences per reconstruction step"})
    reconstruct_sequences: int = field(default=64, metadata={"help": "calibration sequences for the reconstruction"})
    reconstruct_sequence_length: int = field(default=256, metadata={"help": "tokens per calibration sequence"})

    def __post_init__(self) -> None:
        if self.reconstruct_steps < 0:
            raise ValueError(f"reconstruct_steps={self.reconstruct_steps} must be >= 0 (0: no reconstruction)")
        if not (math.isfinite(self.reconstruct_learning_rate) and self.reconstruct_learning_rate > 0):
            raise ValueError(f"reconstruct_learning_rate={self.reconstruct_learning_rate} must be a finite number > 0")
        for name in ("reconstruct_batch_size", "reconstruct_sequence_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.reconstruct_sequences < self.reconstruct_batch_size:
            raise ValueError(f"reconstruct_sequences={self.reconstruct_sequences} is fewer than one batch: the "
                             f"reconstruction needs at least reconstruct_batch_size={self.reconstruct_batch_size} "
                             "calibration sequences")

    def reconstruction_options(self) -> ReconstructionOptions:
        """These options alone (from a dataclass that has them among others, such as the pipeline's)."""
        return ReconstructionOptions(**{f.name: getattr(self, f.name) for f in fields(ReconstructionOptions)})


@dataclass
class BlockResult:
    """One block's squared error to the full-precision block's output, relative to what that block adds to its
    input, on the calibration set, before and after training."""

    block: int
    error_before: float
    error_after: float
    seconds: float


def calibration_sequences(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, options: ReconstructionOptions
                          ) -> torch.Tensor:
    """``reconstruct_sequences`` rows of ``reconstruct_sequence_length`` tokens: the texts tokenized, joined with
    EOS and cut (no padding). Too little text for that many is an error that says how much is needed."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    need = options.reconstruct_sequences * options.reconstruct_sequence_length
    stream: list[int] = []
    for text in texts:
        if len(stream) >= need:
            break
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + eos
    if len(stream) < need:
        have = len(stream) // options.reconstruct_sequence_length
        raise ValueError(f"the calibration data holds {len(stream)} tokens: {have} sequences of "
                         f"{options.reconstruct_sequence_length}, but the reconstruction needs "
                         f"reconstruct_sequences={options.reconstruct_sequences} ({need} tokens; at least "
                         f"reconstruct_batch_size={options.reconstruct_batch_size} sequences): give more text or "
                         "lower --reconstruct-sequences")
    return torch.tensor(stream[:need]).view(options.reconstruct_sequences, options.reconstruct_sequence_length)


def reconstruct_blocks(student: PreTrainedModel, reference: PreTrainedModel, input_ids: torch.Tensor,
                       options: ReconstructionOptions, *, checkpoint_dir: str | os.PathLike | None = None,
                       tokenizer: PreTrainedTokenizerBase | None = None) -> list[BlockResult]:
    """Train each decoder block of ``student`` (a BitNet training model) to reproduce the same block of
    ``reference`` (its full-precision source) on ``input_ids`` (calibration sequences, no padding), in place.

    With ``checkpoint_dir``, the student is saved there after every block (with ``tokenizer``) and a rerun resumes
    after the last saved block (load the student from ``checkpoint_dir`` first: :func:`resume_point`).
    Returns each block's error before and after (also logged).
    """
    if options.reconstruct_steps < 1:
        raise ValueError("reconstruct_steps is 0: nothing to reconstruct")
    student_layers, reference_layers = _decoder_layers(student, "student"), _decoder_layers(reference, "reference")
    _check_pair(student, reference, len(student_layers), len(reference_layers))
    if input_ids.dim() != 2 or input_ids.shape[0] < options.reconstruct_batch_size:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: the reconstruction needs at least "
                         f"reconstruct_batch_size={options.reconstruct_batch_size} sequences (rows)")
    done = _saved_blocks(checkpoint_dir, options) if checkpoint_dir is not None else []
    from .warmup import set_quantization_strength

    attention = student.config._attn_implementation
    reference.set_attn_implementation(attention)  # the same masks fit both models' layers
    set_quantization_strength(student, 1.0)
    device = next(student.parameters()).device
    chunks = input_ids.to(device).split(options.reconstruct_batch_size)
    if len(chunks) > 1 and chunks[-1].shape[0] < options.reconstruct_batch_size:
        chunks = chunks[:-1]
    hidden, layer_kwargs = _block_inputs(reference, reference_layers, chunks)
    was_training = student.training
    student.train()
    bar = tqdm(total=len(student_layers), initial=len(done), desc="Reconstructing blocks", unit="block")
    try:
        for i, (block, target_block) in enumerate(zip(student_layers, reference_layers)):
            with torch.no_grad():
                targets = [_output(target_block(x, **layer_kwargs[c][i])) for c, x in enumerate(hidden)]
            if i >= len(done):
                result = _train_block(i, block, hidden, targets, [kw[i] for kw in layer_kwargs], options)
                done.append(result)
                logger.info("block %d: relative error %.4f -> %.4f (%.0f s)", i, result.error_before,
                            result.error_after, result.seconds)
                if checkpoint_dir is not None:
                    _save(student, checkpoint_dir, tokenizer, done, options)
                bar.update(1)
                bar.set_postfix(error=f"{result.error_after:.3g}")
            hidden = targets
    finally:
        bar.close()
        student.train(was_training)
    return done


def reconstruct_checkpoint(out: str | os.PathLike, student: Callable[[], PreTrainedModel], reference: str | os.PathLike,
                           input_ids: torch.Tensor, options: ReconstructionOptions, *,
                           tokenizer: PreTrainedTokenizerBase | None = None, overwrite: bool = False,
                           dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, list[BlockResult]]:
    """Reconstruct a student into the checkpoint folder ``out``, resumably: progress is saved in ``<out>.partial``
    after every block, and a rerun with the same options continues from there instead of calling ``student()``
    (which makes the converted model). ``reference``: the full-precision checkpoint the student comes from. Runs on
    the GPU when there is one.
    ``out`` gets the reconstructed model with ``reconstruction.json`` (the options and each block's errors)."""
    from transformers import AutoModelForCausalLM

    from .convert import save_checkpoint

    partial = Path(f"{out}.partial")
    done = resume_point(partial, options)
    if done:
        logger.info("resuming the reconstruction from %s (%d blocks done)", partial, done)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = (AutoModelForCausalLM.from_pretrained(partial, dtype=dtype) if done else student()).to(device)
    fp = AutoModelForCausalLM.from_pretrained(reference, dtype=dtype).to(device).eval()
    results = reconstruct_blocks(model, fp, input_ids, options, checkpoint_dir=partial, tokenizer=tokenizer)
    del fp
    save_checkpoint(model, out, tokenizer=tokenizer, overwrite=overwrite,
                    extra_files={STATE_FILE: (partial / STATE_FILE).read_text()})
    shutil.rmtree(partial)
    return model, results


def resume_point(checkpoint_dir: str | os.PathLike, options: ReconstructionOptions) -> int:
    """How many blocks a reconstruction saved in ``checkpoint_dir`` has done (0 when none); a checkpoint made with
    other options is an error (resuming it would mix two budgets)."""
    return len(_saved_blocks(checkpoint_dir, options))


def _saved_blocks(checkpoint_dir: str | os.PathLike, options: ReconstructionOptions) -> list[BlockResult]:
    state = Path(checkpoint_dir) / STATE_FILE
    if not state.is_file():
        return []
    saved = json.loads(state.read_text())
    if saved["options"] != asdict(options):
        raise ValueError(f"{checkpoint_dir} holds a reconstruction made with other options ({saved['options']}); "
                         "remove it, or rerun with those options")
    return [BlockResult(**b) for b in saved["blocks"]]


def summary(results: list[BlockResult]) -> str:
    before = sum(r.error_before for r in results) / len(results)
    after = sum(r.error_after for r in results) / len(results)
    return (f"{len(results)} blocks reconstructed: mean relative error {before:.4f} -> {after:.4f}, "
            f"{sum(r.seconds for r in results):.0f} s")


def _decoder_layers(model: nn.Module, what: str) -> nn.ModuleList:
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"the {what} model ({type(model).__name__}) has no decoder layers list (`.layers`) to "
                         "reconstruct")
    return layers


def _check_pair(student: nn.Module, reference: nn.Module, n_student: int, n_reference: int) -> None:
    if not isinstance(getattr(student, "config", None), BitNetConfigMixin) or student.config.bitnet_packed:
        raise ValueError(f"the student ({type(student).__name__}) is not a BitNet training model: convert it with "
                         "bitnet_hf.convert_to_bitnet first (a packed model cannot be trained)")
    if isinstance(getattr(reference, "config", None), BitNetConfigMixin):
        raise ValueError("the reference is a BitNet model: give the full-precision model the student was converted "
                         "from")
    if n_student != n_reference or student.config.hidden_size != reference.config.hidden_size:
        raise ValueError(f"the reference ({n_reference} layers, width {reference.config.hidden_size}) is not the "
                         f"student's source ({n_student} layers, width {student.config.hidden_size}): give the "
                         "full-precision model the student was converted from")


def _block_inputs(reference: PreTrainedModel, layers: nn.ModuleList, chunks: tuple[torch.Tensor, ...]
                  ) -> tuple[list[torch.Tensor], list[list[dict[str, Any]]]]:
    """The first block's input and every block's keyword arguments (masks, rotary embeddings: they differ per
    layer in some families), per chunk, captured from one forward of the reference model that stops after the
    last block."""
    hidden: list[torch.Tensor] = []
    kwargs: list[list[dict[str, Any]]] = []

    class _Stop(Exception):
        pass

    def pre_hook(index: int):
        def hook(_module: nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
            kw = dict(kw)
            x = args[0] if args else kw.pop("hidden_states")
            if index == 0:
                hidden.append(x.detach())
            kwargs[-1].append({k: v for k, v in kw.items() if k not in ("past_key_values", "past_key_value")})
            if index == len(layers) - 1:
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for chunk in chunks:
                kwargs.append([])
                try:
                    reference(input_ids=chunk, use_cache=False)
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return hidden, kwargs


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _relative_error(out: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``||out - target||^2 / ||target - x||^2``: the error relative to what the reference block adds to its input
    (the residual stream would make any block look nearly right)."""
    return (out.float() - target.float()).pow(2).mean() / (target.float() - x.float()).pow(2).mean()


def _train_block(index: int, block: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                 kwargs: list[dict[str, Any]], options: ReconstructionOptions) -> BlockResult:
    start = time.perf_counter()

    def error() -> float:
        with torch.no_grad():
            return sum(_relative_error(_output(block(x, **kw)), t, x).item()
                       for x, t, kw in zip(inputs, targets, kwargs)) / len(inputs)

    before = error()
    params = [p for p in block.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=options.reconstruct_learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / options.reconstruct_steps)))
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(index))
    try:
        for step in range(options.reconstruct_steps):
            c = int(order[step % len(order)])
            loss = _relative_error(_output(block(inputs[c], **kwargs[c])), targets[c], inputs[c])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None
    return BlockResult(index, before, error(), time.perf_counter() - start)


def _save(student: PreTrainedModel, path: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None,
          done: list[BlockResult], options: ReconstructionOptions) -> None:
    from .convert import save_checkpoint

    state = json.dumps({"options": asdict(options), "blocks": [asdict(r) for r in done]}, indent=1)
    save_checkpoint(student, path, tokenizer=tokenizer, overwrite=True, extra_files={STATE_FILE: state})
