"""Every GPU path against its CPU result: extraction, mixed-precision training, captions, the CLI, DDP, benchmarks.

Marked `gpu` and skipped without CUDA: `pytest -m gpu` runs them on a GPU machine (`benchmarks/gpu_check.sh`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_args

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def test_clips(tiny_dataset) -> list[Path]:
    return sorted((tiny_dataset / "videos").glob("*.mp4"))[-4:]


def _extract(spec, items, folder: Path, accelerator: str, precision: str) -> dict[str, np.ndarray]:
    from captioner.features.cache import FeatureCache
    from captioner.features.extract import run_extraction

    torch.manual_seed(0)  # the same random-weight CNN both times
    cache = FeatureCache(folder, spec)
    assert not run_extraction(spec, items, cache, accelerator=accelerator, precision=precision, batch_size=4,
                              num_workers=0, progress=False)
    return {vid: np.load(cache.dir / f"{vid}.npy").astype(np.float32) for vid, _ in items}


@pytest.mark.parametrize("precision", ["auto", "bf16-mixed"])
def test_extraction_on_gpu_gives_the_cpu_features(tiny_dataset, tmp_path, precision):
    from captioner.config import FeatureSpec
    from captioner.data.datasets import load_annotations

    spec = FeatureSpec(backbone="resnet18", weights=None, num_frames=4)
    items = [(c.id, c.path) for c in load_annotations(tiny_dataset / "annotations.json")][:8]
    cpu = _extract(spec, items, tmp_path / "cpu", "cpu", "32-true")
    gpu = _extract(spec, items, tmp_path / "gpu", "gpu", precision)  # auto: 16-mixed
    tol = 2e-2 if precision == "auto" else 6e-2  # fp16 / bf16 mantissas
    for vid in cpu:
        scale = float(np.abs(cpu[vid]).max())
        np.testing.assert_allclose(gpu[vid], cpu[vid], rtol=tol, atol=tol * scale, err_msg=vid)


def test_greedy_and_beam_captions_on_gpu_equal_the_cpu_ones(trained, test_clips):
    from captioner import VideoCaptioner

    cpu = VideoCaptioner.from_checkpoint(trained[2])
    gpu = VideoCaptioner.from_checkpoint(trained[2], map_location="cuda")
    assert gpu.device.type == "cuda"
    feats = torch.randn(6, cpu.spec.num_frames, cpu.pool.feature_dim, generator=torch.Generator().manual_seed(0))
    for beam in (1, 3):  # generation alone, on the same features
        assert gpu.caption_features(feats.cuda(), beam_size=beam) == cpu.caption_features(feats, beam_size=beam)
    for beam in (1, 3):
        assert gpu.caption(test_clips, beam_size=beam) == cpu.caption(test_clips, beam_size=beam), beam


def test_caption_cli_on_cuda_prints_the_cpu_captions(trained, test_clips):
    def caption(device: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "captioner", "caption", *map(str, test_clips), "--checkpoint",
                               str(trained[2]), "--device", device], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    out = caption("cuda")
    assert out.count("\n") == len(test_clips) and out == caption("cpu")


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_training_steps_on_gpu_under_mixed_precision(tiny_datamodule_args, tmp_path, precision):
    from captioner.cli.train import train_main

    metrics = train_main(tiny_args(tiny_datamodule_args, tmp_path, "--trainer.accelerator=gpu",
                                   "--trainer.devices=1", f"--trainer.precision={precision}",
                                   "--trainer.max_epochs=2"))
    assert np.isfinite(metrics["test/bleu4"]) and sorted(tmp_path.rglob("epoch*.ckpt"))


def test_ddp_over_every_gpu_present(tiny_datamodule_args, tmp_path):
    n = torch.cuda.device_count()
    argv = tiny_args(tiny_datamodule_args, tmp_path, "--trainer.accelerator=gpu", f"--trainer.devices={n}",
                     "--trainer.strategy=ddp", "--trainer.max_epochs=1", "--trainer.precision=bf16-mixed")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *argv], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"MEMBER: {n}/{n}" in proc.stdout + proc.stderr and sorted(tmp_path.rglob("epoch*.ckpt"))


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_training_benchmark_on_gpu_gives_a_believable_share(precision):
    rows = _benchmark("training").run(smoke=True, device="cuda", precision=precision, steps=20, batch_sizes=(64,),
                                      baseline=False)
    share = next(r for r in rows if "share of step outside the model" in r.measurement)
    assert "INVALID" not in share.ratio, share


def test_extraction_benchmark_on_gpu_runs_both_cudnn_policies():
    rows = _benchmark("extraction").run(smoke=True, device="cuda", num_clips=24, batch_size=2,
                                        cudnn_benchmark="both")
    names = [r.measurement for r in rows]
    assert sum("end to end" in n for n in names) == 2
    assert any("cudnn.benchmark on" in n for n in names) and any("cudnn.benchmark off" in n for n in names)
