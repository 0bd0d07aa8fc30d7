"""Two CPU processes (torchrun, gloo) distil to the same weights as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distributed_distill import run

HERE = Path(__file__).parent


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(HERE / "distributed_distill.py"), str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP kept the ranks in lockstep

    single = run(tmp_path / "single", per_device_batch=4)  # one process, the same 4 examples a step
    single_start = run(tmp_path / "start", per_device_batch=4, steps=0).model.state_dict()
    weights = single.model.state_dict()
    moved = 0
    for name, value in rank0.items():
        assert torch.allclose(value, weights[name], rtol=1e-4, atol=1e-6), name
        moved += (value - weights[name]).abs().max() < (value - single_start[name]).abs().max()
    assert moved > 0  # training changed the weights by more than the two runs differ
    logs = [e for e in json.loads((tmp_path / "rank0.json").read_text()) if "loss" in e]
    single_logs = [e for e in single.state.log_history if "loss" in e]
    assert len(logs) == len(single_logs) == 3
    for a, b in zip(logs, single_logs):
        for key in ("loss", "ce", "logits_kd", "attention_kd"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)
