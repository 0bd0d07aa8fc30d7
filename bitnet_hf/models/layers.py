"""BitNet layers: ``SubLN``, the training ``BitLinear`` and the deployment ``PackedBitLinear``.

Both linears carry the optional SubLN of BitDistill as a child module ``sub_norm`` applied to their input, so
placing SubLN in front of a projection needs no change to the model's forward (transformers' own
``integrations.bitnet.BitLinear`` carries its optional RMSNorm the same way).

This file only imports torch, transformers and its own folder: it travels into saved checkpoints as remote code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import (active_kernel, cpu_kernel, exact_top, int4_rows, int4_rows_weight, int4pack_linear,
                      int4pack_weight, ternary_linear)
from .quantization import (
    WeightScheme,
    dequantize_activations,
    fake_quantize_activations,
    fake_quantize_weights,
    pack_ternary,
    unpack_ternary,
)


class SubLN(nn.Module):
    """RMSNorm with a per-channel gain, ``x / sqrt(mean(x^2) + eps) * weight``, computed in float32.

    Named apart from the families' ``*RMSNorm`` classes on purpose: transformers initialises modules by class name,
    and Gemma's rule (``"RMSNorm"`` -> zeros, for its ``1 + weight`` norm) would zero this gain.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True).add_(self.eps))
        return h.mul_(self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class BitLinear(nn.Linear):
    """Drop-in ``nn.Linear`` that trains latent full-precision weights through the BitNet quantizers.

    The forward is ``F.linear(Q_act(SubLN(x)), Q_w(W)) + b`` with straight-through gradients. ``quantize=False``
    skips both quantizers (the layer is then exactly ``nn.Linear`` after the optional SubLN), for checks.
    It stays an ``nn.Linear`` so PEFT, accelerate and ``_init_weights`` treat it as one.

    ``quantization_strength`` (not saved; 1 by default, the deployed model's forward) blends both quantizers with
    their inputs, ``x + strength * (q(x) - x)``: a quantization warm-up raises it from 0 to 1 during training
    (``bitnet_hf.warmup``). ``scheme``: the layout of the weight scales (``WeightScheme``; default per tensor).
    """

    quantization_strength: float = 1.0

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, sub_norm_eps: float | None = None, quantize: bool = True,
                 scheme: WeightScheme | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.quantize = quantize
        self.scheme = scheme or WeightScheme()
        self.scheme.check(in_features)
        self.sub_norm = None if sub_norm_eps is None else SubLN(in_features, sub_norm_eps, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, sub_norm_eps: float | None, quantize: bool,
                    scheme: WeightScheme | None = None) -> BitLinear:
        """A ``BitLinear`` that shares ``linear``'s weight and bias Parameters (no copy, no re-initialisation)."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta",
                  sub_norm_eps=None, quantize=quantize, scheme=scheme)
        new.weight = linear.weight
        new.bias = linear.bias
        if sub_norm_eps is not None:
            new.sub_norm = SubLN(linear.in_features, sub_norm_eps, device=linear.weight.device, dtype=linear.weight.dtype)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sub_norm is not None:
            x = self.sub_norm(x)
        if not self.quantize:
            return F.linear(x, self.weight, self.bias)
        strength = self.quantization_strength
        return F.linear(fake_quantize_activations(x, strength),
                        fake_quantize_weights(self.weight, strength, self.scheme), self.bias)

    def extra_repr(self) -> str:
        scale = "" if self.scheme == WeightScheme() else f", scale={self.scheme.scale}" + (
            f"/{self.scheme.group_size}" if self.scheme.group_size else "")
        return f"{super().extra_repr()}, quantize={self.quantize}{scale}"


_CPU_DTYPES = (torch.float32, torch.bfloat16)  # what the CPU kernels (ternary linears, quantized head) take
# int4pack beats unpacking at every call (the torch kernel) only for bfloat16 inputs of few rows: 1 row 0.08 vs
# 0.85 ms, 32 rows 0.56 vs 0.95, 64 rows even, 128 rows 2.3 vs 1.4 ms (1536 x 576, groups of 64, one thread); in
# float32 it is slower from one row on (1.8 vs 0.4 ms) and 45x slower at 128 rows.
INT4PACK_MAX_ROWS = 32
# Scales per group of input columns: the C++ kernels scale inside their matrix-vector loops, which beat unpacking at
# every call in float32 below 128 rows (1 row 0.06 vs 2.3 ms, 32 rows 0.8 vs 6.1) and int4pack in bfloat16 for 1-2
# rows only (1 row 0.043 vs 0.083 ms, 4 rows 0.13 vs 0.10); 1536 x 576, groups of 64, vnni, one thread.
GROUPED_C_MAX_ROWS = {torch.float32: 127, torch.bfloat16: 2}


class PackedBitLinear(nn.Module):
    """Inference linear over ternary weights packed 4 per byte (transformers' BitNet layout) and one scale.

    Buffers: ``weight`` uint8 ``(ceil(out / 4), in)``, ``weight_scale`` float32 holding ``s = mean(|W|)`` per
    tensor ``(1,)``, per row ``(out, 1)`` or per group ``(out, in / group)`` as ``scheme`` says (so ``W ~
    scheme.dequantize(unpack(weight), weight_scale)``), optional ``bias``.

    The forward runs one of the kernels of ``kernels.py``, chosen once per process (``repr`` shows it):

    * on CPU, without gradients, in float32 or bfloat16: the C++ ternary kernel (``vnni`` / ``avx2``: same integer
      dot products as the reference, scaled in float32 by the scale of the tensor or of the row). Scales per group
      along the input, or a machine without the C++ kernels, take ``int4pack`` (whose groups of 32 columns hold
      any of the scales exactly) for bfloat16 inputs of at most ``INT4PACK_MAX_ROWS`` rows, where it is the faster
      route, and the reference forward otherwise;
    * everywhere else (CUDA, other dtypes, autograd, ``BITNET_HF_KERNEL=torch``): the reference forward, which
      performs the very operations of ``BitLinear``'s quantized forward and so reproduces it bit for bit.

    Sibling layers that read the same input (q/k/v, gate/up) may share a :class:`FusedProjections`: the first one
    called computes all of them with one activation quantization.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, sub_norm_eps: float | None = None,
                 scheme: WeightScheme | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = scheme or WeightScheme()
        self.scheme.check(in_features)
        rows = -(-out_features // 4)
        self.register_buffer("weight", torch.zeros(rows, in_features, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(self.scheme.scale_shape(out_features, in_features),
                                                        dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.sub_norm = None if sub_norm_eps is None else SubLN(in_features, sub_norm_eps, device=device, dtype=dtype)
        self.fused: FusedProjections | None = None
        self._int4pack: tuple[torch.dtype, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_bitlinear(cls, layer: BitLinear, dtype: torch.dtype) -> PackedBitLinear:
        """Quantize and pack a trained ``BitLinear``; its bias and SubLN gain are cast to ``dtype``."""
        eps = None if layer.sub_norm is None else layer.sub_norm.eps
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, device=layer.weight.device,
                  dtype=dtype, sub_norm_eps=eps, scheme=layer.scheme)
        with torch.no_grad():
            q, scale = layer.scheme.quantize(layer.weight)
            new.weight.copy_(pack_ternary(q))
            new.weight_scale.copy_(scale.reshape(new.weight_scale.shape))
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
            if layer.sub_norm is not None:
                new.sub_norm.weight.copy_(layer.sub_norm.weight)
        return new

    def kernel_for(self, x: torch.Tensor) -> str:
        """The kernel that runs this layer on ``x``."""
        if (x.dtype not in _CPU_DTYPES or x.device.type != "cpu" or self.weight.device.type != "cpu"
                or (torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None
                                                                     and self.bias.requires_grad)))):
            return "torch"
        kernel = cpu_kernel()
        if kernel in ("vnni", "avx2") and (self.scheme.per_output
                                           or x.numel() <= GROUPED_C_MAX_ROWS[x.dtype] * x.shape[-1]):
            return kernel
        if kernel != "torch" and x.dtype == torch.bfloat16 and x.numel() <= INT4PACK_MAX_ROWS * x.shape[-1]:
            return "int4pack"
        return "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sub_norm is not None:
            x = self.sub_norm(x)
        kernel = self.kernel_for(x)
        if kernel in ("vnni", "avx2"):
            if self.fused is not None:
                return self.fused.output(self, x, kernel)
            return ternary_linear(x, [self], kernel)[0]
        if kernel == "int4pack":
            return self._int4pack_forward(x)
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ``torch`` kernel (after SubLN): unpack, dequantize, ``F.linear``; bit for bit ``BitLinear``'s."""
        weight = self.scheme.dequantize(unpack_ternary(self.weight, self.out_features), self.weight_scale.float(),
                                        x.dtype)
        return F.linear(dequantize_activations(x), weight, self.bias)

    def _int4pack_forward(self, x: torch.Tensor) -> torch.Tensor:
        # The int4 copy (2x the packed size) is made on first use, for the dtype of the activations.
        if self._int4pack is None or self._int4pack[0] != x.dtype:
            q = unpack_ternary(self.weight, self.out_features)
            self._int4pack = (x.dtype, *int4pack_weight(q, self.weight_scale, x.dtype))
        y = int4pack_linear(dequantize_activations(x), self._int4pack[1], self._int4pack[2], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        fused = "" if self.fused is None else f", fused={len(self.fused.members)}"
        kernel = active_kernel() or "chosen at first call"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kernel={kernel} on CPU, torch elsewhere{fused}")


class FusedProjections:
    """Packed linears of one block that read the same input (q/k/v, gate/up).

    The first member called with an input runs all members in one kernel call (one activation quantization, one
    parallel loop) and keeps the other outputs; a member then called with that very tensor (same object, not
    modified in place since) gets its kept output. Any other call computes afresh, so the result never depends on
    the calling order. Inference tensors (``torch.inference_mode``) carry no version counter to prove the input
    unchanged, so each member computes alone there. ``torch.compile`` traces the hand-over into its graph (one
    kernel call for the group), by identity of the input alone, as the tracer cannot read version counters: the
    traced code, transformers' attention and MLP, reads that input without modifying it in place. Only the C++
    kernels use it; the weights stay in their own modules (and files).
    """

    def __init__(self, members: list[PackedBitLinear]) -> None:
        if any(m.sub_norm is not None for m in members) or len({m.in_features for m in members}) != 1:
            raise ValueError("fused projections need one input width and no SubLN of their own")
        self.members = members
        self._input: torch.Tensor | None = None
        self._version = -1
        self._kept: dict[int, torch.Tensor] = {}

    def output(self, member: PackedBitLinear, x: torch.Tensor, kernel: str) -> torch.Tensor:
        compiling = torch.compiler.is_compiling()
        if not compiling and x.is_inference():
            self._kept.clear()
            self._input = None
            return ternary_linear(x, [member], kernel)[0]
        kept = self._kept.pop(id(member), None)
        if kept is not None and self._input is x and (compiling or self._version == x._version):
            if not self._kept:
                self._input = None
            return kept
        outs = ternary_linear(x, self.members, kernel)
        self._input, self._version = x, (-1 if compiling else x._version)
        self._kept = {id(m): y for m, y in zip(self.members, outs) if m is not member}
        return outs[self.members.index(member)]


LM_HEAD_MODES = ("full", "int8", "int4", "int4_exact_top")
EXACT_TOP = 64  # logits that ``int4_exact_top`` recomputes from the stored rows, per token


class QuantizedLMHead(nn.Linear):
    """An output head that multiplies with a quantized copy of its weight on CPU (an option of packed models,
    ``bitnet_lm_head``); the weight Parameter itself stays as it is (tied to the embeddings, saved unchanged).

    * ``int8``: one absmax scale per output row, ``_weight_int8pack_mm`` (int8 weights, activations unquantized);
    * ``int4``: groups of 32 columns, asymmetric min/max (16 levels), ``_weight_int4pack_mm_for_cpu``;
    * ``int4_exact_top``: int4 for the whole vocabulary, then each token's ``EXACT_TOP`` highest logits recomputed
      from the stored rows (read with ``pread`` when the matrix stays in the file, see ``rows_source``): the top of
      the distribution, and so greedy and top-k decoding, is the exact head's, the rest int4's. With the ``vnni``
      kernel the int4 pass is ``kernels.int4_rows`` (one scale and offset per 128 columns, int8 activations: 1.6x the
      speed of ``int4``'s at 151936 x 1024; it only has to rank, the top is recomputed), else ``int4``'s.

    The copy is made by ``from_pretrained`` (for the model's dtype), else at the first call on CPU (for the input's
    dtype); gradients, other devices and other dtypes use the full-precision weight.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, *, mode: str) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if mode not in LM_HEAD_MODES[1:]:
            raise ValueError(f"QuantizedLMHead mode must be one of {LM_HEAD_MODES[1:]}, got {mode!r}")
        self.mode = mode
        # ((activation dtype, layout), weight, scales): layout is the mode's, or "int4_rows" (see forward)
        self._quantized: tuple[tuple[torch.dtype, str], torch.Tensor, torch.Tensor] | None = None
        # (path, inode, byte offset) of the matrix in the checkpoint file, set by from_pretrained: exact rows are
        # then read from the file instead of through the weight's memory map
        self.rows_source: tuple[str, int, int] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str) -> QuantizedLMHead:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta", mode=mode)
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype not in _CPU_DTYPES
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return F.linear(x, self.weight, self.bias)
        self.prepare(x.dtype)
        (_, layout), weight, scales = self._quantized
        rows = x.reshape(-1, self.in_features)
        if layout == "int4_rows":
            y = int4_rows(rows, weight, scales)
        elif self.mode == "int8":
            y = torch.ops.aten._weight_int8pack_mm(rows, weight, scales)
        else:
            y = int4pack_linear(rows, weight, scales, self.out_features)
        if self.mode == "int4_exact_top":
            y = self._exact_top(y, rows)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def _exact_top(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y`` with each row's ``EXACT_TOP`` highest logits recomputed from the stored rows: one C++ call where the C++
        kernels run (``kernels.exact_top``: 0.1 ms a token on the Qwen3-0.6B shape), else torch's top-k, row read and
        ``bmm`` (0.4 ms; ties at the k-th value may pick other indices than the C++ call, which takes the lower)."""
        k = min(EXACT_TOP, self.out_features)
        if cpu_kernel() in ("vnni", "avx2"):
            return exact_top(y, x, self.weight.detach(), self.rows_source, k)
        top = y.topk(k, dim=-1).indices
        exact = torch.bmm(self._rows(top).to(x.dtype), x.unsqueeze(-1)).squeeze(-1)
        return y.scatter(-1, top, exact.to(y.dtype))

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the stored matrix: from the file when it stays there, else from the weight."""
        if self.rows_source is None:
            return self.weight.detach()[ids]
        path, inode, offset = self.rows_source
        return torch.ops.bitnet_hf.read_rows(ids, path, inode, offset, self.out_features, self.in_features,
                                             self.weight.dtype)

    def prepare(self, dtype: torch.dtype, weight: torch.Tensor | None = None) -> None:
        """Make the quantized copy for ``dtype`` activations now (``from_pretrained`` does, for the model's dtype),
        from ``weight`` if given: the same values as ``self.weight`` held elsewhere (a memory map of the file)."""
        layout = "int4_rows" if self.mode == "int4_exact_top" and cpu_kernel() == "vnni" else self.mode
        if self._quantized is None or self._quantized[0] != (dtype, layout):
            with torch.no_grad():
                source = self.weight.detach() if weight is None else weight
                quantized = (int4_rows_weight(source) if layout == "int4_rows"
                             else self.quantize(source, self.mode, dtype))
                self._quantized = ((dtype, layout), *quantized)

    @staticmethod
    def quantize(weight: torch.Tensor, mode: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The quantized weight and its scales (int8) or scales and zeros (int4) for ``dtype`` activations, computed
        4096 rows at a time into preallocated tensors (a float32 copy of a whole 151936-row head would add 600 MB
        to the peak memory)."""
        out_features, in_features = weight.shape
        chunk = 4096
        mode = "int4" if mode == "int4_exact_top" else mode
        if mode == "int8":
            q = torch.empty(out_features, in_features, dtype=torch.int8)
            scales = torch.empty(out_features, dtype=torch.float32)
            for start in range(0, out_features, chunk):
                q[start:start + chunk], scales[start:start + chunk] = QuantizedLMHead._quantize_rows(
                    weight[start:start + chunk], mode)
            return q, scales.to(dtype)
        # PyTorch's int4 CPU layout packs blocks of 64 rows independently, so packing 4096 rows at a time gives the
        # very tensor packing the whole int32 matrix would (tested), without that 600 MB int32 matrix.
        rows, cols = out_features + -out_features % 16, in_features + -in_features % 32
        packed, scales_zeros = [], torch.zeros(rows, cols // 32, 2, dtype=torch.float32)
        for start in range(0, rows, chunk):
            block = weight[start:start + chunk]
            q = torch.full((min(chunk, rows - start), cols), 8, dtype=torch.int32)
            q[:block.shape[0]], scales_zeros[start:start + block.shape[0]] = QuantizedLMHead._quantize_rows(block, mode)
            packed.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        return torch.cat(packed), scales_zeros.transpose(0, 1).contiguous().to(dtype)

    @staticmethod
    def _quantize_rows(rows: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        w = rows.float()
        if mode == "int8":  # one absmax scale per row
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
            return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale
        # int4: groups of 32 columns, asymmetric min/max over 16 levels
        w = F.pad(w, (0, -w.shape[1] % 32))
        groups = w.view(w.shape[0], -1, 32)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).view_as(w)
        # _weight_int4pack_mm_for_cpu dequantizes (q - 8) * scale + zero: zero = low + 8 * scale
        return q, torch.stack([scale, low + 8 * scale], dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode} on CPU"


def _read_rows(ids: torch.Tensor, path: str, inode: int, offset: int, rows: int, cols: int,
               dtype: torch.dtype) -> torch.Tensor:
    """Rows ``ids`` of the ``(rows, cols)`` matrix of ``dtype`` stored at byte ``offset`` of the file ``path``, read
    with ``pread`` (through the page cache, into this tensor only). ``inode`` is the file's when the model loaded."""
    flat = ids.reshape(-1).tolist()
    bad = [i for i in flat if not 0 <= i < rows]
    if bad:
        raise IndexError(f"index {bad[0]} out of range in self (an embedding of {rows} rows)")
    out = torch.empty(len(flat), cols, dtype=dtype)
    raw = out.view(torch.uint8).numpy()
    row_bytes = raw.shape[1]
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_ino != inode:
            raise RuntimeError(f"{path} was replaced after the model was loaded from it; load the model again")
        for i, row in enumerate(flat):
            if os.preadv(fd, [raw[i]], offset + row * row_bytes) != row_bytes:
                raise RuntimeError(f"{path} is shorter than when the model was loaded from it; load the model again")
    finally:
        os.close(fd)
    return out.view(*ids.shape, cols)


def _read_rows_fake(ids: torch.Tensor, path: str, inode: int, offset: int, rows: int, cols: int,
                    dtype: torch.dtype) -> torch.Tensor:
    return ids.new_empty(*ids.shape, cols, dtype=dtype)


# An operator, so that torch.compile keeps the read as one call in its graph. Defined once per process: this file
# may be imported twice (as bitnet_hf and as a checkpoint's remote code).
if not hasattr(torch.ops.bitnet_hf, "read_rows"):
    torch.library.custom_op("bitnet_hf::read_rows", _read_rows, mutates_args=()).register_fake(_read_rows_fake)


_FILE_ROWS_CLASSES: dict[type, type] = {}  # an nn.Embedding subclass -> its FileRowsEmbedding version


class FileRowsEmbedding(nn.Embedding):
    """An embedding whose matrix stays in the checkpoint's safetensors file: without gradients, a lookup reads only
    its rows, with ``pread``. Set up by ``from_pretrained`` with a quantized head (``bitnet_lm_head``), where the
    matrix is only looked up: that keeps the process's memory to the rows read, where reading through the file's
    memory map would keep a large folio of the page cache (about 1.5 MB here) per row looked up.

    ``weight`` is still the stored matrix (memory-mapped), for gradients and ``save_pretrained``.
    """

    rows_source: tuple[str, int, int]  # path, inode, byte offset of the matrix

    @classmethod
    def attach(cls, embedding: nn.Embedding, path: Path, offset: int) -> None:
        """Make ``embedding`` (an ``nn.Embedding`` or a subclass, such as Gemma 3's scaled one, whose own forward
        then runs on top) read its rows from ``path``, where its matrix starts at byte ``offset``."""
        base = type(embedding)
        if base is not nn.Embedding and base not in _FILE_ROWS_CLASSES:
            _FILE_ROWS_CLASSES[base] = type(f"FileRows{base.__name__}", (base, cls), {})
        embedding.__class__ = _FILE_ROWS_CLASSES.get(base, cls)
        embedding.rows_source = (str(path), path.stat().st_ino, offset)

    @staticmethod
    def detach(embedding: nn.Module) -> None:
        """Undo :meth:`attach` (before the file may change)."""
        if isinstance(embedding, FileRowsEmbedding):
            embedding.__class__ = next(c for c in type(embedding).__mro__ if not issubclass(c, FileRowsEmbedding))
            del embedding.rows_source

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.max_norm is not None or (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(input)
        path, inode, offset = self.rows_source
        return torch.ops.bitnet_hf.read_rows(input, path, inode, offset, self.num_embeddings, self.embedding_dim,
                                             self.weight.dtype)
