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

The "compiled" variants decode through :func:`bitnet_hf.compile_decoding` (static cache, ``torch.compile``'d decode
step); their warm-up ``generate`` compiles, from scratch (an inductor cache of this run only), so only the compiled
step is timed, and their RSS includes the compiler's own. Prefill stays eager in every variant.
"""

from __future__ import annotations

import json
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


# name, checkpoint folder (full precision or packed), dtype to load in, bitnet_lm_head, compiled decoding
_VARIANT_SPECS = (
    ("bf16", "bf16", "bfloat16", None, False),
    ("fp32", "bf16", "float32", None, False),
    ("packed", "packed", "bfloat16", "full", False),
    ("packed+int8 head", "packed", "bfloat16", "int8", False),
    ("packed+int4 head", "packed", "bfloat16", "int4", False),
    ("bf16 compiled", "bf16", "bfloat16", None, True),
    ("packed+int4 head compiled", "packed", "bfloat16", "int4", True),
)
VARIANTS = tuple(spec[0] for spec in _VARIANT_SPECS)


@dataclass(frozen=True)
class Variant:
    name: str
    checkpoint: Path
    dtype: str  # dtype to load in
    lm_head: str | None = None  # bitnet_lm_head of a packed model
    compiled: bool = False  # decode with a static cache and torch.compile (transformers' CompileConfig)


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
    }


def prepare(checkpoint: str | None, workdir: Path) -> tuple[list[Variant], dict[str, int], str]:
    """Write the checkpoints the workers load; returns the variants, their checkpoint bytes and a description."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

    from .convert import convert_to_bitnet, pack_bitnet, save_checkpoint
    from .models import CONFIG_CLASSES

    fp_dir, packed_dir = workdir / "bf16", workdir / "packed"
    torch.manual_seed(0)
    if checkpoint is None:
        fp = AutoModelForCausalLM.from_config(Qwen3Config(**QWEN3_06B_SHAPE), dtype=torch.bfloat16)
        what = "random model of Qwen3-0.6B's shape"
        packed = None
    else:
        config = AutoConfig.from_pretrained(checkpoint)
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
    save_checkpoint(fp, fp_dir, overwrite=True)
    if packed is None:
        packed = pack_bitnet(convert_to_bitnet(fp))
    save_checkpoint(packed, packed_dir, overwrite=True)
    del fp, packed
    variants = [Variant(name, workdir / folder, dtype, lm_head, compiled)
                for name, folder, dtype, lm_head, compiled in _VARIANT_SPECS]
    # fp32 loads the bf16 file: its tensors at 4 bytes
    sizes = {v.name: _folder_bytes(v.checkpoint) * (2 if v.dtype == "float32" else 1) for v in variants}
    return variants, sizes, what


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")


def run(checkpoint: str | None = None, *, prompt_tokens: int = 32, new_tokens: int = 64, threads: int = 2,
        rounds: int = 3, variants: list[str] | None = None, profile: bool = False,
        workdir: str | None = None) -> dict[str, object]:
    """Prepare the checkpoints, start one worker per variant, run ``rounds`` interleaved rounds; returns the result."""
    unknown = sorted(set(variants or ()) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown bench variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="bitnet-hf-bench-", dir=workdir) as tmp:
        machine = machine_description()
        all_variants, sizes, what = prepare(checkpoint, Path(tmp))
        chosen = [v for v in all_variants if variants is None or v.name in variants]
        workers: dict[str, _Worker] = {}
        info = {}
        try:
            for v in chosen:  # one at a time: a worker's warm-up would disturb another's
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
            "final": final}


class _Worker:
    def __init__(self, variant: Variant, prompt_tokens: int, new_tokens: int, threads: int, profile: bool) -> None:
        args = [sys.executable, "-m", "bitnet_hf.bench", "--worker", str(variant.checkpoint), variant.dtype,
                variant.lm_head or "", str(prompt_tokens), str(new_tokens), str(threads), "1" if profile else "0",
                "1" if variant.compiled else "0"]
        # A compiled variant compiles from scratch, into an inductor cache of this run only, so results do not
        # depend on what earlier runs left in the user's cache (a process that finds its code there holds less).
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "TORCHINDUCTOR_CACHE_DIR": str(variant.checkpoint.parent / "inductor-cache")}
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
    from bitnet_hf.models.kernels import cpu_kernel

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
    kernel = cpu_kernel() if is_packed else "torch (oneDNN)"
    print("BENCH " + json.dumps({"kernel": kernel, "rss_before_load_mib": before,
                                 "rss_loaded_mib": _memory_mib("VmRSS")}), flush=True)
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

    def ratio(name: str, key: str) -> str:
        if base is None:
            return "-"
        values = [a[key] / b[key] for a, b in zip(rows[name], base)]
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
    machine = result["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['memory_gib']} GiB, "
              f"ISA {' '.join(machine['isa'])}; Python {machine['python']}, torch {machine['torch']}, transformers "
              f"{machine['transformers']}; load average (1 min) {machine['load_average_at_start']:.2f} at start, "
              f"{machine['load_average_at_end']:.2f} after the rounds."]
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]),
            sys.argv[8] == "1", sys.argv[9] == "1")
