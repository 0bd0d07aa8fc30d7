"""Kernels of packed linears (``bitnet_hf/models/kernels.py``): exactness, fusion, dispatch and fallback.

Claims and tolerances:

* ``vnni`` / ``avx2`` compute the same integer dot products ``xq . wq`` as the reference quantization, then
  ``float(dot) * ((absmax / 127) * s) (+ bias)`` (``s`` per tensor or per output row) in float32 rounded once to
  the input dtype, or with scales per group ``sum_g float(dot_g) * ((absmax / 127) * s_g)`` in group order: equal
  bit for bit to that expression computed here from the integer quantities, for every shape, dtype and batch.
* ``int4pack`` and the C++ kernels against the ``torch`` kernel (float matmul of the dequantized values): float
  rounding only, bounded here by 1e-5 (float32) / 2e-2 (bfloat16) of the output's largest magnitude.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from bitnet_hf import PackedBitLinear, compile_decoding, convert_to_bitnet, pack_bitnet
from bitnet_hf.models import kernels
from bitnet_hf.models.layers import INT4PACK_MAX_ROWS, FusedProjections
from bitnet_hf.models.quantization import WeightScheme, pack_ternary, quantize_activations
from tiny import FAMILIES, kernel, tiny_model, tokens

C_KERNELS = ("vnni", "avx2")


def c_kernel_or_skip(name: str) -> None:
    reason = kernels._unavailable(name)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


@pytest.fixture
def fresh_choice(monkeypatch):
    """Forget the process's kernel choice and library state for one test, and restore them after."""
    state = dict(kernels._state)
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    kernels._state.update(kernel=None)
    yield
    kernels._state.update(state)


def random_layer(in_features: int, out_features: int, bias: bool, dtype: torch.dtype, seed: int = 0,
                 scale: str = "tensor", group_size: int = 0) -> tuple[PackedBitLinear, torch.Tensor]:
    """A packed layer of random ternary weights and scales, one per tensor, per output row (``scale="row"``) or per
    group of ``group_size`` input columns of a row (``scale="group"``)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-1, 2, (out_features, in_features), generator=g, dtype=torch.int8)
    layer = PackedBitLinear(in_features, out_features, bias, dtype=dtype, scheme=WeightScheme(scale, group_size))
    with torch.no_grad():
        layer.weight.copy_(pack_ternary(q))
        layer.weight_scale.copy_(0.01 + torch.rand(layer.weight_scale.shape, generator=g) / 10)
        if bias:
            layer.bias.normal_(generator=g)
    return layer, q


def packed_checkpoint(tmp_path, family: str = "qwen3"):  # noqa: ANN001 - pytest's tmp_path
    """A tiny packed model of ``family`` saved at ``tmp_path / "packed"`` (returned)."""
    from bitnet_hf import save_checkpoint

    path = tmp_path / "packed"
    save_checkpoint(pack_bitnet(convert_to_bitnet(tiny_model(family)).eval()), path)
    return path


def integer_reference(layer: PackedBitLinear, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    xq, absmax = quantize_activations(x)
    scale = layer.weight_scale.float()
    if layer.scheme.scale == "group":  # one float32 term per group, summed in group order
        size = layer.scheme.group_size
        y = torch.zeros(*x.shape[:-1], layer.out_features)
        for g in range(scale.shape[1]):
            dot = xq[..., g * size:(g + 1) * size].double() @ q[:, g * size:(g + 1) * size].double().T
            y = y + dot.float() * ((absmax / 127.0) * scale[:, g])
    else:
        dot = xq.double() @ q.double().T  # exact: integers far below 2**53
        y = dot.float() * ((absmax / 127.0) * scale.reshape(-1))  # one scale, or one per row
    if layer.bias is not None:
        y = y + layer.bias.float()
    return y.to(x.dtype)


SHAPES = [  # (leading shape of x, in_features, out_features): widths not multiples of 64 / 32 / 4, batch > 1,
    # many rows through the matrix-vector loops (100 rows cross their 64-token blocks and end in a partial group
    # of 4), and through the int8 GEMM route (>= 128 rows: 150, and 300 rows crossing its 256-row blocks with a
    # weight of 2 unpacked chunks, the second holding 3 packed rows of which only the first has all 4 fields)
    ((1,), 100, 13), ((1, 1), 1024, 3072), ((3, 7), 129, 37), ((2, 5), 64, 16), ((9,), 1000, 6), ((4, 2), 31, 5),
    ((100,), 200, 70), ((2, 75), 200, 70), ((3, 100), 4100, 1030),
]
# (leading shape, in_features, out_features, group size) for scales per group: groups of 32 (half a VNNI load, the
# next group's activations masked off; the last one reads past its row), 64 and 128, 1 to 300 rows (all on the
# matrix-vector loops)
GROUP_SHAPES = [((1,), 96, 13, 32), ((3, 7), 256, 37, 64), ((1, 1), 1024, 3072, 128), ((100,), 192, 70, 64),
                ((2, 150), 160, 6, 32)]


@pytest.mark.parametrize("name", C_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("lead", "k", "n"), SHAPES)
@pytest.mark.parametrize("scale", ["tensor", "row"])
def test_c_kernels_equal_the_integer_reference(name, dtype, lead, k, n, scale):
    c_kernel_or_skip(name)
    layer, q = random_layer(k, n, bias=n % 2 == 1, dtype=dtype, scale=scale)
    x = (torch.randn(*lead, k, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    x[..., 0] = 0 if x.shape[-1] > 1 else x[..., 0]  # zeros and a lone outlier: the quantizer's edge cases
    x.view(-1, k)[0, -1] = 40
    with kernel(name), torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype and y.shape == (*lead, n)
    assert torch.equal(y, integer_reference(layer, q, x))


@pytest.mark.parametrize("name", C_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("lead", "k", "n", "size"), GROUP_SHAPES)
def test_c_kernels_with_group_scales_equal_the_integer_reference(name, dtype, lead, k, n, size):
    c_kernel_or_skip(name)
    layer, q = random_layer(k, n, bias=n % 2 == 1, dtype=dtype, scale="group", group_size=size)
    x = (torch.randn(*lead, k, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    x.view(-1, k)[0, -1] = 40
    with torch.no_grad():  # called directly: the layer routes many rows of group scales elsewhere
        y = kernels.ternary_linear(x, [layer], name)[0]
    assert y.dtype == dtype and y.shape == (*lead, n)
    assert torch.equal(y, integer_reference(layer, q, x))
    with torch.no_grad(), kernel("torch"):
        expected = layer(x)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert (y.float() - expected.float()).abs().max() <= tolerance * expected.float().abs().max()


@pytest.mark.parametrize("name", C_KERNELS)
def test_group_scales_that_do_not_fit_are_refused(name):
    c_kernel_or_skip(name)
    layer, _ = random_layer(96, 8, bias=False, dtype=torch.float32)
    layer.weight_scale = torch.ones(8, 5)  # 96 columns do not split into 5 groups
    with pytest.raises(RuntimeError, match="one per group of a multiple of 32 input columns"):
        kernels.ternary_linear(torch.randn(1, 96), [layer], name)


@pytest.mark.parametrize("name", C_KERNELS)
def test_fused_call_equals_separate_calls(name):
    c_kernel_or_skip(name)
    members = [random_layer(96, n, bias=b, dtype=torch.bfloat16, seed=n, scale=s)[0]
               for n, b, s in ((64, True, "tensor"), (32, False, "row"), (37, True, "tensor"))]
    group = FusedProjections(members)
    x = torch.randn(2, 3, 96).bfloat16()
    with kernel(name), torch.no_grad():
        alone = [m(x) for m in members]
        for m in members:
            m.fused = group
        # any calling order; the second member gets the output kept from the first call
        fused = {i: members[i](x) for i in (1, 0, 2)}
        assert not group._kept and group._input is None  # nothing held after the last member
        x2 = x.clone()
        first = members[0](x2)
        x2.mul_(2)  # modified in place: the kept outputs are stale and must not be used
        assert torch.equal(members[1](x2), kernels.ternary_linear(x2, [members[1]], name)[0])
    for i, y in fused.items():
        assert torch.equal(y, alone[i])
    assert torch.equal(first, alone[0])
    # inference tensors have no version counter: each member computes alone, still exactly
    with kernel(name), torch.inference_mode():
        xi = x.clone()
        assert all(torch.equal(members[i](xi), alone[i]) for i in (1, 0, 2))
        assert not group._kept


@pytest.mark.parametrize("name", ["int4pack", *C_KERNELS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", ["tensor", "row"])
def test_every_kernel_is_close_to_the_torch_kernel(name, dtype, scale):
    if name in C_KERNELS:
        c_kernel_or_skip(name)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for lead, k, n in SHAPES:
        layer, _ = random_layer(k, n, bias=True, dtype=dtype, scale=scale)
        x = torch.randn(*lead, k).to(dtype)
        with torch.no_grad():
            with kernel("torch"):
                expected = layer(x)
            with kernel(name):  # int4pack called as such: the layer routes it only a few bf16 rows
                y = layer._int4pack_forward(x) if name == "int4pack" else layer(x)
        assert y.dtype == dtype and y.shape == expected.shape
        assert (y.float() - expected.float()).abs().max() <= tolerance * expected.float().abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_models_run_every_kernel(family):
    """Whole models: logits of each kernel close to the torch kernel's (bf16 storage, float32 compute), and
    generate with the KV cache equals generate recomputing everything (each row's result depends on that row only)."""
    packed = pack_bitnet(convert_to_bitnet(tiny_model(family)).eval(), dtype=torch.float32)
    assert all(m.fused is not None for m in packed.modules() if isinstance(m, PackedBitLinear)
               and not m.sub_norm)  # q/k/v and gate/up are fused (SubLN "paper" sits on o_proj and down_proj)
    x = tokens(batch=3, length=10)
    with torch.no_grad(), kernel("torch"):
        expected = packed(x).logits
    for name in ("int4pack", *C_KERNELS):
        if name in C_KERNELS and kernels._unavailable(name):
            continue
        with torch.no_grad(), kernel(name):
            logits = packed(x).logits
            prompt = tokens(batch=2, length=5)
            kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
            cached = packed.generate(prompt, **kwargs)
            assert torch.equal(cached, packed.generate(prompt, use_cache=False, **kwargs))
            torch.manual_seed(0)
            sampled = packed.generate(prompt, do_sample=True, top_k=5, max_new_tokens=6, pad_token_id=0)
        assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max(), name
        assert sampled.shape == (2, 11)


@pytest.mark.parametrize("name", C_KERNELS)
def test_compiled_packed_model_keeps_the_kernel(name):
    """``torch.compile`` traces the C++ op (its fake implementation gives the shapes) in one graph, and the compiled
    model, and ``generate`` after :func:`compile_decoding` (static cache, compiled decode step), give the eager
    model's results; the graph keeps q/k/v and gate/up as one kernel call each."""
    c_kernel_or_skip(name)
    from torch._dynamo.backends.debugging import aot_eager
    packed = pack_bitnet(convert_to_bitnet(tiny_model("qwen3")).eval(), dtype=torch.float32)
    x = tokens(batch=2, length=7)
    torch._dynamo.reset()
    with torch.no_grad(), kernel(name):
        expected = packed(x).logits
        # aot_eager: the compiler's tracing with fake tensors, without the C++ code generation of inductor
        compiled = torch.compile(packed, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(x).logits, expected)
        prompt = tokens(batch=1, length=5)
        kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        graphs = []

        def backend(graph, example_inputs, **options):  # aot_eager, counting the graphs it is given
            graphs.append(graph)
            return aot_eager(graph, example_inputs)

        eager = packed.generate(prompt, **kwargs)
        compile_decoding(packed, backend=backend, fullgraph=True)
        assert torch.equal(packed.generate(prompt, **kwargs), eager)
        assert len(graphs) == 1  # the decode step, compiled once, in one graph
        calls = [n for n in graphs[0].graph.nodes if "ternary_linear" in str(n.target)]
        linears = [m for m in packed.modules() if isinstance(m, PackedBitLinear)]
        groups = {id(m.fused): len(m.fused.members) for m in linears if m.fused is not None}
        assert groups and len(calls) == len(linears) - sum(n - 1 for n in groups.values())  # q/k/v, gate/up fused
    torch._dynamo.reset()


def test_compiled_decoding_keeps_each_models_graphs_apart():
    """On CPU ``compile_decoding`` compiles without guards on the model's modules, so each model gets a decode step
    of its own: two models of one class and shape but different activations, compiled in one process, each give
    their eager logits (with one step for both and no module guards, the second runs the first one's graph: off by
    up to 0.02); compiling again gives a new step."""
    torch._dynamo.reset()
    prompt = tokens(batch=1, length=5)
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None, output_logits=True,
                  return_dict_in_generate=True)
    models = [tiny_model("qwen3", seed=0).eval(), tiny_model("qwen3", seed=1, hidden_act="relu").eval()]
    with torch.no_grad():
        eager = [torch.cat(m.generate(prompt, **kwargs).logits) for m in models]
        assert not torch.allclose(*eager)
        for m in models:
            compile_decoding(m, backend="aot_eager")
        for m, expected in zip(models, eager):
            # static cache and decode_attention: the eager model's logits up to float rounding
            torch.testing.assert_close(torch.cat(m.generate(prompt, **kwargs).logits), expected, rtol=0, atol=1e-5)
    step = models[0].get_compiled_call(models[0].generation_config.compile_config)
    compile_decoding(models[0], backend="aot_eager")
    assert models[0].get_compiled_call(None) is not step
    torch._dynamo.reset()


@pytest.mark.parametrize("name", C_KERNELS)
def test_group_scales_route_by_rows(name):
    """Scales per group: the C++ kernel for float32 inputs below 128 rows and 1-2 bf16 rows, int4pack for a few more
    bf16 rows, the torch kernel beyond (``GROUPED_C_MAX_ROWS``, ``INT4PACK_MAX_ROWS``); per row: the C++ kernel."""
    c_kernel_or_skip(name)
    grouped, _ = random_layer(64, 8, bias=False, dtype=torch.float32, scale="group", group_size=32)
    per_row, _ = random_layer(64, 8, bias=False, dtype=torch.float32, scale="row")
    routes = {(torch.float32, 1): name, (torch.float32, 127): name, (torch.float32, 128): "torch",
              (torch.bfloat16, 1): name, (torch.bfloat16, 2): name, (torch.bfloat16, 3): "int4pack",
              (torch.bfloat16, INT4PACK_MAX_ROWS): "int4pack", (torch.bfloat16, INT4PACK_MAX_ROWS + 1): "torch"}
    with kernel(name), torch.no_grad():
        for (dtype, rows), route in routes.items():
            x = torch.zeros(rows, 64, dtype=dtype)
            assert (grouped.kernel_for(x), per_row.kernel_for(x)) == (route, name), (dtype, rows)


def test_non_cpu_and_autograd_take_the_torch_kernel():
    layer, _ = random_layer(40, 12, bias=True, dtype=torch.float32)
    meta = PackedBitLinear(40, 12, True, device="meta")
    x = torch.randn(2, 40)
    with kernel("int4pack"):
        assert meta.kernel_for(x.to("meta")) == "torch"
        assert meta(x.to("meta")).shape == (2, 12)  # the torch kernel, which any device runs
        with torch.no_grad():
            assert layer.kernel_for(x.bfloat16()) == "int4pack"
            assert layer.kernel_for(x.half()) == "torch"
            # int4pack is slower than unpacking at every call in float32 and from a few dozen bf16 rows on
            assert layer.kernel_for(x) == "torch"
            assert layer.kernel_for(torch.zeros(INT4PACK_MAX_ROWS, 40).bfloat16()) == "int4pack"
            assert layer.kernel_for(torch.zeros(INT4PACK_MAX_ROWS + 1, 40).bfloat16()) == "torch"
        assert layer.kernel_for(x.bfloat16()) == "torch"  # gradients wanted (the bias is a Parameter)
        layer(x.requires_grad_()).sum().backward()
        assert torch.equal(layer.bias.grad, torch.full((12,), 2.0))


def test_repr_shows_the_kernel():
    layer, _ = random_layer(8, 4, bias=False, dtype=torch.float32)
    with kernel("int4pack"):
        assert "kernel=int4pack on CPU, torch elsewhere" in repr(layer)
    with kernel("torch"):
        assert "kernel=torch on CPU" in repr(layer)


def test_environment_variable_forces_a_kernel(fresh_choice, monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    layer, q = random_layer(16, 8, bias=False, dtype=torch.float32)
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(layer(x), layer.reference_forward(x))
    assert kernels.active_kernel() == "torch"  # chosen by the first forward, once
    monkeypatch.setenv(kernels.ENV_VAR, "int4pack")
    assert kernels.active_kernel() == "torch"  # not re-read at every call
    assert kernels.select_kernel() == "int4pack"
    monkeypatch.setenv(kernels.ENV_VAR, "fastest")
    with pytest.warns(RuntimeWarning, match="not one of auto"):
        assert kernels.select_kernel() in kernels.KERNELS


def _choose(requested: str | None = None) -> tuple[str, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = kernels.select_kernel(requested)
    return chosen, [str(w.message) for w in caught]


def test_no_compiler_falls_back_with_one_warning(fresh_choice, monkeypatch, tmp_path):
    monkeypatch.setenv("BITNET_HF_CACHE", str(tmp_path))  # no cached build there: it must compile
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    kernels._state.update(library=None)
    chosen, messages = _choose()
    assert chosen == "int4pack"
    assert len(messages) == 1
    assert "fall back to the 'int4pack' kernel" in messages[0] and "could not be built" in messages[0]
    layer, q = random_layer(50, 9, bias=True, dtype=torch.bfloat16)
    x = torch.randn(2, 50).bfloat16()
    with torch.no_grad():
        y = layer(x)  # runs, on int4pack
        expected = layer.reference_forward(x)
    assert (y.float() - expected.float()).abs().max() <= 2e-2 * expected.float().abs().max()


def test_read_only_cache_falls_back(fresh_choice, monkeypatch):
    monkeypatch.setenv("BITNET_HF_CACHE", "/proc/bitnet-hf-cache")  # read-only even for root
    kernels._state.update(library=None)
    chosen, messages = _choose("vnni")
    assert chosen == "int4pack" and len(messages) == 1
    assert "vnni: the C++ kernels could not be built" in messages[0] and "avx2:" in messages[0]


def test_cpu_without_the_instructions_falls_back(fresh_choice, monkeypatch):
    if kernels._library_error() is not None:
        pytest.skip("the C++ kernels do not build here")
    monkeypatch.setattr(kernels, "cpu_supports", lambda name: name == "avx2")
    chosen, messages = _choose()
    assert chosen == "avx2" and len(messages) == 1 and "lacks AVX-512 VNNI" in messages[0]
    monkeypatch.setattr(kernels, "cpu_supports", lambda name: False)
    chosen, messages = _choose("avx2")
    assert chosen == "int4pack" and len(messages) == 1 and "lacks AVX2" in messages[0]


@pytest.mark.parametrize(("mode", "tolerance"), [("int8", 0.02), ("int4", 0.2)])
def test_quantized_lm_head_option(mode, tolerance, tmp_path):
    """``bitnet_lm_head`` at load: the head multiplies with a quantized copy (error bounded relative to the largest
    logit: measured accuracy on SmolLM2 in the README), the tied weight and the file stay as they are."""
    from transformers import AutoModelForCausalLM

    from bitnet_hf import save_checkpoint
    from bitnet_hf.models.layers import QuantizedLMHead

    path = packed_checkpoint(tmp_path)
    full = AutoModelForCausalLM.from_pretrained(path).eval()
    model = AutoModelForCausalLM.from_pretrained(path, bitnet_lm_head=mode).eval()
    assert type(full.lm_head) is torch.nn.Linear and isinstance(model.lm_head, QuantizedLMHead)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied: one matrix in memory and file
    x = tokens(batch=2, length=7)
    with torch.no_grad():
        expected, logits = full(x).logits.float(), model(x).logits.float()
        assert (logits - expected).abs().max() <= tolerance * expected.abs().max()
        assert model.generate(x, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (2, 10)
    assert torch.equal(model(x).logits, full(x).logits)  # with gradients on: the stored weight, exactly
    save_checkpoint(model, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="bitnet_lm_head"):
        AutoModelForCausalLM.from_pretrained(path, bitnet_lm_head="int2")


@pytest.mark.parametrize("route", ["vnni", "avx2", "torch"])
@pytest.mark.parametrize("tied", [True, False])
def test_int4_head_with_exact_top_logits(tied, route, tmp_path, monkeypatch):
    """``int4_exact_top``: each token's highest int4 logits are recomputed from the stored rows, read from the
    checkpoint file (tied or not): there they are the exact head's, elsewhere the int4 pass's; greedy decoding is the
    exact head's; the model compiles in one graph. On every route: ``vnni`` (int4_rows, then the C++ exact_top
    call), ``avx2`` (int4's pass, the C++ call) and ``torch`` (int4's pass, torch's top-k and row read)."""
    if route != "torch":
        c_kernel_or_skip(route)
    from transformers import AutoModelForCausalLM

    import bitnet_hf.models.layers as layers
    from bitnet_hf import save_checkpoint

    path = tmp_path / "packed"
    fp = tiny_model("llama", tie_word_embeddings=tied)
    save_checkpoint(pack_bitnet(convert_to_bitnet(fp).eval()), path)
    full = AutoModelForCausalLM.from_pretrained(path).eval()
    int4 = AutoModelForCausalLM.from_pretrained(path, bitnet_lm_head="int4").eval()
    model = AutoModelForCausalLM.from_pretrained(path, bitnet_lm_head="int4_exact_top").eval()
    head = model.lm_head
    assert head.rows_source is not None and head.rows_source[0] == str((path / "model.safetensors").resolve())
    x = tokens(batch=2, length=7)
    with torch.no_grad(), kernel(route):
        monkeypatch.setattr(layers, "EXACT_TOP", 0)  # the int4 pass alone
        approximate = model(x).logits.float()
        monkeypatch.setattr(layers, "EXACT_TOP", 8)  # of the tiny model's 64-token vocabulary
        exact, logits = full(x).logits.float(), model(x).logits.float()
        if route == "vnni":  # int4_rows: one scale and offset per 128 columns
            assert head._quantized[0][1] == "int4_rows"
            hidden = model.model(x).last_hidden_state
            ranking = kernels.int4_rows(hidden, *kernels.int4_rows_weight(full.lm_head.weight))
            assert torch.equal(approximate, ranking.float())
            assert (approximate - exact).abs().max() <= 0.2 * exact.abs().max()
        else:
            assert torch.equal(approximate, int4(x).logits.float())
        # ties at the 8th value: the C++ call takes the lower indices, torch's top-k its own
        top = (approximate.topk(8, dim=-1) if route == "torch"
               else approximate.sort(dim=-1, descending=True, stable=True)).indices[..., :8]
        recomputed = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
        assert recomputed.sum(-1).eq(8).all() and (~recomputed).any()
        torch.testing.assert_close(logits[recomputed], exact[recomputed], rtol=1e-2, atol=1e-2)  # bf16 rounding
        assert torch.equal(logits[~recomputed], approximate[~recomputed])
        assert torch.equal(logits.argmax(-1), exact.argmax(-1))
        assert torch.equal(model.generate(x, max_new_tokens=4, do_sample=False, pad_token_id=0),
                           full.generate(x, max_new_tokens=4, do_sample=False, pad_token_id=0))
        mapped = head.weight.data  # the rows come from the file, not from the weight, on every route
        head.weight.data = torch.zeros_like(mapped)
        assert torch.equal(model(x).logits.float(), logits)
        assert torch.equal(head._rows(top), full.lm_head.weight[top]) and full.lm_head.weight[top].abs().sum() > 0
        head.weight.data = mapped
        torch._dynamo.reset()
        expected = model(x).logits
        assert torch.equal(torch.compile(model, backend="aot_eager", fullgraph=True)(x).logits, expected)
        torch._dynamo.reset()
    save_checkpoint(model, tmp_path / "again")
    assert model.lm_head.rows_source is None  # the matrix is in RAM now, and the file may change
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()


@pytest.mark.parametrize("rows", [1, 3, 6])  # 1, 3, then 4 + 2 tokens a pass over the matrix
@pytest.mark.parametrize("in_features", [200, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int4_rows_kernel_equals_its_integer_reference(rows, in_features, dtype):
    """``kernels.int4_rows`` (the ranking pass of ``int4_exact_top`` on ``vnni``): the 4-bit codes of
    ``int4_rows_weight`` (each within half a step of the weight, per group of 128 columns) times the int8 activations
    of ``quantize_activations``, summed per group in integers, then scaled and added in float32."""
    c_kernel_or_skip("vnni")
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(300, in_features, generator=g).to(dtype)
    x = torch.randn(rows, in_features, generator=g).to(dtype)
    packed, scale_low = kernels.int4_rows_weight(weight, chunk=128)  # in chunks: the same as whole
    assert torch.equal(packed, kernels.int4_rows_weight(weight)[0])
    groups = -(-in_features // 128)
    assert packed.shape == (300, groups * 64) and scale_low.shape == (300, groups, 2)
    low_nibbles, high_nibbles = (packed & 15).view(300, -1, 64), (packed >> 4).view(300, -1, 64)
    codes = torch.stack([low_nibbles, high_nibbles], dim=2).view(300, groups, 128).double()
    scale, low = scale_low.double().unbind(-1)
    padded = torch.nn.functional.pad(weight.double(), (0, groups * 128 - in_features)).view(300, groups, 128)
    error = (codes * scale[..., None] + low[..., None] - padded).view(300, -1)[:, :in_features]
    assert error.abs().le(scale.repeat_interleave(128, dim=1)[:, :in_features] / 2 + 1e-6).all()
    xq, absmax = quantize_activations(x)  # int8 values, the absmax of each token
    xg = torch.nn.functional.pad(xq.double(), (0, groups * 128 - in_features)).view(rows, groups, 128)
    per_group = torch.einsum("ngk,mgk->mng", codes, xg) * scale + low * xg.sum(-1)[:, None, :]
    reference = (absmax / 127).double() * per_group.sum(-1)
    with torch.no_grad():
        y = kernels.int4_rows(x, packed, scale_low)
    assert y.dtype == dtype and y.shape == (rows, 300)
    # float32 sums in another order than the float64 reference, rounded once to the dtype
    torch.testing.assert_close(y.double(), reference.to(dtype).double(), rtol=max(torch.finfo(dtype).eps, 1e-5),
                               atol=1e-4)


@pytest.mark.parametrize(("vocab", "k"), [(1000, 3), (1000, 8), (300, 64)])  # k below / above the 256-blocks
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_exact_top_call_picks_the_k_largest_and_recomputes_them(vocab, k, dtype, tmp_path):
    """``kernels.exact_top``: in each row the k largest logits, ties to the lower index (a stable descending sort),
    become the products of x with those rows, read from the file or taken from the weight alike; the others stay.
    A replaced or shortened file is an error, never read."""
    c_kernel_or_skip("avx2")
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab, 40, generator=g).to(dtype)
    x = torch.randn(3, 40, generator=g).to(dtype)
    logits = torch.randint(-20, 20, (3, vocab), generator=g).to(dtype)  # small integers: many ties
    top = logits.sort(dim=-1, descending=True, stable=True).indices[:, :k]
    file = tmp_path / "matrix.bin"
    file.write_bytes(b"header" + weight.view(torch.uint8).numpy().tobytes())
    source = (str(file), file.stat().st_ino, len(b"header"))
    with torch.no_grad():
        from_memory = kernels.exact_top(logits, x, weight, None, k)
        from_file = kernels.exact_top(logits, x, weight, source, k)
    assert torch.equal(from_memory, from_file)
    recomputed = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
    assert torch.equal(from_file[~recomputed], logits[~recomputed])
    products = (x.double() @ weight.double().T).gather(-1, top)
    # float32 sums rounded once to the dtype: within one unit of its last place of the exact products (float32:
    # or 1e-5 absolute, as the float32 sum itself rounds)
    torch.testing.assert_close(from_file.gather(-1, top).double(), products, rtol=torch.finfo(dtype).eps, atol=1e-5)
    file.write_bytes(file.read_bytes()[:50])  # in place: same inode, shorter
    with pytest.raises(RuntimeError, match="shorter than when the model was loaded"):
        kernels.exact_top(logits, x, weight, source, k)
    (tmp_path / "new.bin").write_bytes(b"")
    (tmp_path / "new.bin").replace(file)
    with pytest.raises(RuntimeError, match="replaced after the model was loaded"):
        kernels.exact_top(logits, x, weight, source, k)


def test_int4_head_packed_in_blocks_equals_packing_the_whole_matrix():
    """The int4 head is packed 4096 rows at a time (no 600 MB int32 matrix for a 151936-row head); PyTorch's layout
    packs 64-row blocks independently, so the result is the very tensor packing everything at once gives."""
    from bitnet_hf.models.layers import QuantizedLMHead

    weight = torch.randn(4096 + 90, 70, generator=torch.Generator().manual_seed(0)).bfloat16()
    packed, scales_zeros = QuantizedLMHead.quantize(weight, "int4", torch.bfloat16)
    q, expected_scales = QuantizedLMHead._quantize_rows(weight, "int4")
    whole = torch.full((4096 + 96, 96), 8, dtype=torch.int32)
    whole[:weight.shape[0]] = q
    assert torch.equal(packed, torch.ops.aten._convert_weight_to_int4pack_for_cpu(whole, 1))
    assert torch.equal(scales_zeros[:, :weight.shape[0]], expected_scales.transpose(0, 1).bfloat16())


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory map holds ``tensor``'s bytes (Linux ``/proc/self/maps``), or None (anonymous memory)."""
    address = tensor.data_ptr()
    for line in open("/proc/self/maps", encoding="utf-8"):
        fields = line.split()
        start, end = (int(a, 16) for a in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 and fields[5].startswith("/") else None  # not [heap], [anon]
    return None


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")
def test_quantized_head_leaves_the_embedding_in_the_file(tmp_path):
    """With a quantized head, the bf16 embedding/head matrix is mapped from the checkpoint, not held in RAM; the
    quantized copy exists from load; the model computes the same; saving, even over the mapped file, is exact."""
    from transformers import AutoModelForCausalLM

    path = packed_checkpoint(tmp_path)
    original = (path / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(path, bitnet_lm_head="int8").eval()
    embedding = model.model.embed_tokens.weight
    assert model.lm_head.weight is embedding and model.lm_head._quantized is not None
    assert _mapped_file(embedding) == str((path / "model.safetensors").resolve())
    lazy = AutoModelForCausalLM.from_pretrained(path).eval()  # full head: nothing mapped by us
    assert not getattr(lazy, "_bitnet_mapped", [])
    x = tokens(batch=2, length=7)
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(path)  # over the very file the embedding was mapped from
    assert (path / "model.safetensors").read_bytes() == original
    assert _mapped_file(model.model.embed_tokens.weight) is None  # copied into RAM before the save
    with torch.no_grad():
        assert torch.equal(model(x).logits, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_head_reads_embedding_rows_from_the_file(family, tmp_path, monkeypatch):
    """With a quantized head, lookups without gradients read the rows from the checkpoint with ``pread`` (so they
    leave no page of the memory map resident): the same values as the embedding in RAM, the family's own forward
    (Gemma 3's scaling) on top; the usual error for an index out of range; gradients and saving as before."""
    from transformers import AutoModelForCausalLM

    from bitnet_hf.models.layers import FileRowsEmbedding

    path = packed_checkpoint(tmp_path, family)
    in_ram = AutoModelForCausalLM.from_pretrained(path).eval().get_input_embeddings()
    model = AutoModelForCausalLM.from_pretrained(path, bitnet_lm_head="int8").eval()
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, FileRowsEmbedding) and isinstance(embedding, type(in_ram))
    x = tokens(batch=2, length=7)
    with torch.no_grad():
        expected_logits, expected_rows = model(x).logits, in_ram(x)
        with monkeypatch.context() as patch:  # the mapped matrix is not read
            patch.setattr(torch.nn.functional, "embedding", lambda *a, **k: pytest.fail("read through the map"))
            assert torch.equal(embedding(x), expected_rows)
        with pytest.raises(IndexError, match="out of range"):
            embedding(torch.tensor([[3, embedding.num_embeddings]]))
    assert torch.equal(embedding(x), in_ram(x))  # with gradients on: F.embedding on the stored matrix
    model.save_pretrained(tmp_path / "again")
    assert type(model.get_input_embeddings()) is type(in_ram)  # back to the family's class: the file may change
    with torch.no_grad():
        assert torch.equal(model(x).logits, expected_logits)


def test_embedding_rows_from_a_replaced_file_are_an_error(tmp_path):
    """A checkpoint file replaced after loading (a new file under the same name) is never read as the model's."""
    from transformers import AutoModelForCausalLM

    path = packed_checkpoint(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, bitnet_lm_head="int8").eval()
    file = path / "model.safetensors"
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(file.read_bytes())
    copy.replace(file)
    with torch.no_grad(), pytest.raises(RuntimeError, match="replaced after the model was loaded"):
        model(tokens(batch=1, length=3))


def test_file_rows_embedding_compiles_in_one_graph(tmp_path):
    """The row read is an operator with a fake implementation: a model with a quantized head compiles in one graph
    and computes what it computes eagerly."""
    from transformers import AutoModelForCausalLM

    path = packed_checkpoint(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, bitnet_lm_head="int8").eval()
    x = tokens(batch=2, length=7)
    torch._dynamo.reset()
    with torch.no_grad(), kernel("torch"):
        expected = model(x).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(x).logits, expected)
    torch._dynamo.reset()


def attention_inputs(g: torch.Generator, *, batch: int, groups: int,
                     positions: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An attention module with ``groups`` query heads per key/value head, keys and values of 2 heads of 16 over
    ``positions`` cached positions, and a boolean mask hiding about 30% of them (never the first)."""
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = groups, True
    key, value = (torch.randn(batch, 2, positions, 16, generator=g), torch.randn(batch, 2, positions, 16, generator=g))
    mask = torch.rand(batch, 1, 1, positions, generator=g) > 0.3
    mask[..., 0] = True
    return module, key, value, mask


def test_decode_attention_equals_sdpa():
    """``compile_decoding``'s attention for CPU: for one query token, plain matmuls and a float32 softmax equal
    transformers' SDPA attention (grouped keys/values, a mask hiding some positions, or none); other calls are
    SDPA's own."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from bitnet_hf.generation import DECODE_ATTENTION, decode_attention

    g = torch.Generator().manual_seed(0)
    module, key, value, mask = attention_inputs(g, batch=2, groups=4, positions=10)
    for q_len, m in [(1, mask), (1, None), (3, mask.expand(2, 1, 3, 10))]:
        query = torch.randn(2, 8, q_len, 16, generator=g)
        ours, _ = decode_attention(module, query, key, value, m, scaling=0.25)
        expected, _ = sdpa_attention_forward(module, query, key, value, m, scaling=0.25)
        assert ours.shape == expected.shape == (2, q_len, 8, 16)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    model = tiny_model("qwen3")
    compile_decoding(model)
    assert model.config._attn_implementation == DECODE_ATTENTION


def test_decode_attention_compiled_by_inductor_equals_eager():
    """Under inductor the query and the softmax go through ``_computed_once`` (computed into a buffer before the
    one-row matmuls that inductor turns into loops; without it the query's rotary embedding was recomputed for
    every cached position): the compiled attention still equals the eager one, and eagerly the barrier is ``x``
    itself."""
    from bitnet_hf.generation import _computed_once, decode_attention

    g = torch.Generator().manual_seed(0)
    module, key, value, mask = attention_inputs(g, batch=1, groups=2, positions=9)
    raw, angles = torch.randn(1, 4, 1, 16, generator=g), torch.rand(16, generator=g)

    def attend(raw: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        query = raw * angles.cos() + raw.flip(-1) * angles.sin()  # a rotary-embedding-like producer to inline
        return decode_attention(module, query, key, value, mask, scaling=0.25)[0]

    assert _computed_once(raw) is raw
    torch._dynamo.reset()
    try:
        compiled = torch.compile(attend, backend="inductor", fullgraph=True)(raw, angles)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, attend(raw, angles), rtol=1e-5, atol=1e-5)
