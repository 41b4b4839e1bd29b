"""Under DDP, every process's captions are gathered before BLEU: 2 CPU processes score exactly like 1."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_validate.py")


@pytest.mark.slow
def test_two_process_ddp_bleu_equals_one_process(trained, tiny_datamodule_args, tmp_path):
    _, _, best = trained
    scores = {}
    for n in (1, 2):
        out = tmp_path / f"bleu_{n}.json"
        proc = subprocess.run([sys.executable, str(SCRIPT), str(best), json.dumps(tiny_datamodule_args), str(n),
                               str(out), str(tmp_path / f"root{n}")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        scores[n] = json.loads(out.read_text())
    assert scores[2]["world_size"] == 2
    # 5 validation clips on 2 processes: the sampler pads one process with a repeated clip, counted once
    for k in ("val/bleu1", "val/bleu2", "val/bleu3", "val/bleu4"):
        assert scores[2][k] == scores[1][k], k
    assert scores[1]["val/bleu1"] > 0


@pytest.mark.slow
def test_cluster_config_on_two_cpu_processes_fits_tests_and_resumes_longer(tiny_datamodule_args, tmp_path):
    """docs/cluster.md's cluster command on CPU: configs/trainer/cluster.yaml (DDP, bf16-mixed, clipping) layered
    over the data, 2 processes; then "train 1 more epoch" from its last.ckpt."""
    import os

    import torch
    from conftest import tiny_args

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}

    def train(*extra: str) -> str:
        args = tiny_args(tiny_datamodule_args, root, "--model.num_samples=0", *extra)
        proc = subprocess.run([sys.executable, str(repo / "scripts" / "train.py"), "--config",
                               str(repo / "configs" / "synthetic.yaml"), "--config",
                               str(repo / "configs" / "trainer" / "cluster.yaml"), "--trainer.accelerator=cpu",
                               "--trainer.devices=2", *args], capture_output=True, text=True, timeout=600, env=env,
                              cwd=tmp_path)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return proc.stdout + proc.stderr

    out = train("--trainer.max_epochs=2")
    assert "Starting with 2 processes" in out and "bfloat16 Automatic Mixed Precision" in out and "Test metrics:" in out
    last = root / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["epoch"] == 1 and first["lr_schedulers"][0]["total_steps"] == first["global_step"]
    out = train("--trainer.max_epochs=3", f"--ckpt_path={last}")
    assert "Resumed at optimizer step" in out and "Test metrics:" in out
    resumed = torch.load(root / "logs" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == first["global_step"] * 3 // 2
