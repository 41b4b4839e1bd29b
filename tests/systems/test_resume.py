"""Runs survive being killed: training resumed from a mid-epoch last.ckpt matches an uninterrupted run, a killed
extraction finishes with the same files. (SIGUSR1/SIGTERM, SLURM's warnings: test_preemption.py.)"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_args

REPO = Path(__file__).resolve().parents[2]
TRAIN = Path(__file__).with_name("train_and_kill.py")
# one thread per process: the same float operations in the same order in every run, and two runs fit on 2 cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONWARNINGS": "ignore"}
EVERY, KILL_AT = 4, 13  # last.ckpt every 4 steps; 10 steps an epoch: killed 3 steps into the 2nd epoch


def _train(dm: dict, root: Path, *extra: str, env: dict | None = None, every: int | None = EVERY,
           epochs: int = 2) -> subprocess.Popen:
    args = tiny_args(dm, root, f"--trainer.max_epochs={epochs}", "--trainer.log_every_n_steps=1",
                     "--model.num_samples=0", f"--model.checkpoint_every_n_steps={every or 'null'}", *extra)
    return subprocess.Popen([sys.executable, str(TRAIN), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env or ENV, cwd=root.parent)


def _losses(metrics_csv: Path) -> dict[int, float]:
    rows = list(csv.DictReader(metrics_csv.open()))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def _val(metrics_csv: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("val/bleu4")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_datamodule_args, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    runs = {"clean": _train(tiny_datamodule_args, clean),
            "killed": _train(tiny_datamodule_args, killed, env={**ENV, "KILL_AT_STEP": str(KILL_AT)})}
    out = {name: proc.communicate(timeout=400)[0] for name, proc in runs.items()}
    assert runs["clean"].returncode == 0, out["clean"][-3000:]
    assert runs["killed"].returncode == -signal.SIGKILL, out["killed"][-3000:]
    assert f"KILLING at global step {KILL_AT}, epoch 1, batch 3" in out["killed"]

    last = killed / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 12 and saved["epoch"] == 1  # mid-epoch: 2 of the 2nd epoch's 10 batches done
    assert saved["CaptioningDataModule"] == {"train_sampler": {"epoch": 1, "samples_seen": 16},
                                             "vocab": saved["hyper_parameters"]["vocab"]}
    resumed = _train(tiny_datamodule_args, killed, f"--ckpt_path={last}")
    log = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, log[-3000:]

    a_dir, b_dir = clean / "logs" / "version_0", killed / "logs" / "version_1"  # the resumed run's own folder
    # every step after the restart sees the same batch, dropout mask and learning rate: the same loss
    a, b = _losses(a_dir / "metrics.csv"), _losses(b_dir / "metrics.csv")
    assert sorted(b) == list(range(12, 20))
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step
    assert _val(b_dir / "metrics.csv") == pytest.approx(_val(a_dir / "metrics.csv"), abs=1e-6)
    # and ends with the same weights, optimizer and scheduler state, vocabulary and test scores
    a_ckpt = torch.load(a_dir / "checkpoints" / "last.ckpt", weights_only=True)
    b_ckpt = torch.load(b_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert a_ckpt["global_step"] == b_ckpt["global_step"] == 20
    assert a_ckpt["hyper_parameters"]["vocab"] == b_ckpt["hyper_parameters"]["vocab"]
    for name, weight in a_ckpt["state_dict"].items():
        torch.testing.assert_close(b_ckpt["state_dict"][name], weight, rtol=1e-6, atol=1e-6, msg=name)
    for key, value in a_ckpt["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(b_ckpt["optimizer_states"][0]["state"][key]["exp_avg_sq"], value["exp_avg_sq"],
                                   rtol=1e-6, atol=1e-9)
    assert a_ckpt["lr_schedulers"][0]["last_epoch"] == b_ckpt["lr_schedulers"][0]["last_epoch"] == 20
    a_test = json.loads(next(a_dir.rglob("test_metrics.json")).read_text())
    # the run's best checkpoint, tested and its scores written beside it (the resumed run keeps a new best only
    # when it beats the whole run's, as the clean run does)
    b_test = json.loads(next(killed.rglob("test_metrics.json")).read_text())
    assert b_test == pytest.approx(a_test, abs=1e-6)


@pytest.mark.slow
def test_sigkill_at_an_epochs_end_then_resume_matches_an_uninterrupted_run(tiny_datamodule_args, tmp_path):
    """The shipped configs' checkpoint: `last.ckpt` at the end of each epoch only. Killed as the 3rd epoch starts,
    the run resumes from the 2nd epoch's end (whose validation score did not improve) and finishes identically:
    the validation and the next epoch's new loader draw nothing from the random state saved in the checkpoint."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    runs = {"clean": _train(tiny_datamodule_args, clean, every=None, epochs=3),
            "killed": _train(tiny_datamodule_args, killed, every=None, epochs=3, env={**ENV, "KILL_AT_STEP": "20"})}
    out = {name: proc.communicate(timeout=400)[0] for name, proc in runs.items()}
    assert runs["clean"].returncode == 0, out["clean"][-3000:]
    assert runs["killed"].returncode == -signal.SIGKILL, out["killed"][-3000:]
    last = killed / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 20 and saved["CaptioningDataModule"]["train_sampler"] == {"epoch": 2,
                                                                                             "samples_seen": 0}
    resumed = _train(tiny_datamodule_args, killed, f"--ckpt_path={last}", every=None, epochs=3)
    log = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, log[-3000:]
    a_dir, b_dir = clean / "logs" / "version_0", killed / "logs" / "version_1"
    a, b = _losses(a_dir / "metrics.csv"), _losses(b_dir / "metrics.csv")
    assert sorted(b) == list(range(20, 30))
    assert [b[step] for step in b] == [a[step] for step in b]  # bit for bit: same batches, dropout, learning rates
    a_ckpt = torch.load(a_dir / "checkpoints" / "last.ckpt", weights_only=True)
    b_ckpt = torch.load(b_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert a_ckpt["global_step"] == b_ckpt["global_step"] == 30
    for name, weight in a_ckpt["state_dict"].items():
        assert torch.equal(b_ckpt["state_dict"][name], weight), name
    assert _val(b_dir / "metrics.csv") == _val(a_dir / "metrics.csv")


def test_resume_from_an_epochs_end_matches_an_uninterrupted_run(tiny_datamodule_args, tmp_path, single_thread,
                                                                 monkeypatch):
    """The quick, in-process version: a run stopped after its 2nd epoch (as a kill then would) and resumed."""
    import pytorch_lightning as pl

    from captioner.cli.train import train_main
    from captioner.systems.captioning import CaptioningSystem

    class StopAfterEpoch(pl.Callback):  # runs after the checkpoint callbacks: last.ckpt is written first
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = trainer.should_stop or (stop and trainer.current_epoch == 1)

    configure, stop = CaptioningSystem.configure_callbacks, False
    monkeypatch.setattr(CaptioningSystem, "configure_callbacks", lambda self: [*configure(self), StopAfterEpoch()])

    def run(root: Path, *extra: str) -> tuple[Path, dict]:
        # whole epochs: Lightning makes the next epoch's loader iterator after the checkpoint only then
        metrics = train_main(tiny_args(tiny_datamodule_args, root, "--trainer.max_epochs=3",
                                       "--trainer.log_every_n_steps=1", "--model.num_samples=0", *extra))
        return max((root / "logs").iterdir()), metrics  # the newest version folder

    clean, clean_test = run(tmp_path / "clean")
    stop = True
    stopped, _ = run(tmp_path / "stopped")
    last = stopped / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 20  # the 2nd epoch's, its BLEU no better
    stop = False
    resumed, resumed_test = run(tmp_path / "stopped", f"--ckpt_path={last}")
    a, b = _losses(clean / "metrics.csv"), _losses(resumed / "metrics.csv")
    assert sorted(b) == list(range(20, 30)) and [b[step] for step in b] == [a[step] for step in b]  # bit for bit
    assert _val(resumed / "metrics.csv") == _val(clean / "metrics.csv")
    a_ckpt = torch.load(clean / "checkpoints" / "last.ckpt", weights_only=True)
    b_ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    for name, weight in a_ckpt["state_dict"].items():
        assert torch.equal(b_ckpt["state_dict"][name], weight), name
    assert resumed_test == clean_test  # the same best checkpoint tested: a tie keeps the earlier, as uninterrupted


def test_resumable_sampler_order_depends_on_seed_and_epoch_only():
    from torch.utils.data import DistributedSampler

    from captioner.data.datamodule import ResumableShuffleSampler

    data = list(range(50))
    sampler = ResumableShuffleSampler(data, seed=3)
    sampler.set_epoch(2)
    torch.manual_seed(123)  # the global random state plays no part
    full = list(sampler)
    reference = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    reference.set_epoch(2)
    assert full == list(reference) and sorted(full) == data
    sampler.set_epoch(1)
    assert list(sampler) != full
    resumed = ResumableShuffleSampler(data, seed=3)
    resumed.resume(epoch=2, samples_seen=16)
    assert list(resumed) == full[16:]
    assert list(resumed) == full  # only the first pass is shortened
    resumed.resume(epoch=2, samples_seen=16)
    resumed.set_epoch(3)  # a checkpoint of another epoch: nothing skipped
    assert len(list(resumed)) == 50


def test_resume_keeps_the_checkpoints_vocabulary(trained):
    """Data changed since the checkpoint (a new word): the run goes on with the vocabulary the weights know. The
    system rebuilds its model with it; the data module takes it back from its own saved state."""
    from types import SimpleNamespace

    from captioner.data.datamodule import CaptioningDataModule
    from captioner.systems.captioning import CaptioningSystem
    from captioner.vocab import Vocabulary

    ckpt = torch.load(trained[2], weights_only=True)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}  # not the CLI's class path
    system = CaptioningSystem(**{**hp, "vocab": hp["vocab"] + ["zebra"]})  # as set up from the changed data
    datamodule = CaptioningDataModule()
    datamodule.vocab = Vocabulary(hp["vocab"] + ["zebra"])  # as `setup` builds it from the changed data
    system._trainer = SimpleNamespace(datamodule=datamodule)
    with pytest.warns(UserWarning, match="differs from the checkpoint's .* resuming with the checkpoint's"):
        system.on_load_checkpoint(ckpt)
    assert system.model.vocab.itos == system.hparams.vocab == hp["vocab"]
    assert datamodule.vocab.itos == hp["vocab"] + ["zebra"]  # the system leaves the data module alone
    datamodule.load_state_dict(ckpt[type(datamodule).__qualname__])  # which Lightning calls next
    assert datamodule.vocab.itos == hp["vocab"]  # captions are encoded with the checkpoint's words
    assert datamodule.state_dict()["vocab"] == hp["vocab"]  # and the next checkpoint keeps them
    system.load_state_dict(ckpt["state_dict"])  # and the weights fit
    other = CaptioningSystem(**{**hp, "vocab": hp["vocab"] + ["zebra"], "feature_dim": 7})
    with pytest.raises(ValueError, match="trained on other features"):
        other.on_load_checkpoint(ckpt)


def test_resume_from_a_checkpoint_without_the_data_vocabulary_hands_it_over(trained):
    """Checkpoints saved before the data module kept its vocabulary: the system gives it the checkpoint's."""
    from types import SimpleNamespace

    from captioner.systems.captioning import CaptioningSystem

    ckpt = torch.load(trained[2], weights_only=True)
    ckpt = {k: v for k, v in ckpt.items() if k != "CaptioningDataModule"}
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    system = CaptioningSystem(**{**hp, "vocab": hp["vocab"] + ["zebra"]})
    taken = []
    system._trainer = SimpleNamespace(datamodule=SimpleNamespace(use_vocabulary=taken.append))
    with pytest.warns(UserWarning, match="differs from the checkpoint's"):
        system.on_load_checkpoint(ckpt)
    assert [v.itos for v in taken] == [hp["vocab"]]


# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset plus an unreadable clip."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    shutil.copytree(tiny_dataset, root)
    (root / "videos" / "broken.mp4").write_text("not a video")
    ann = json.loads((root / "annotations.json").read_text())
    ann["videos"].append({"id": "broken", "path": "videos/broken.mp4", "split": "train", "captions": ["nothing"]})
    (root / "annotations.json").write_text(json.dumps(ann))
    return root


def _extract_argv(dataset: Path, features: Path) -> list[str]:
    # the features of tiny_datamodule_args (224 px): one clip a batch is slow enough for the kill to land mid-run
    return ["--data.data_dir", str(dataset), "--data.features_dir", str(features), "--data.features.backbone",
            "resnet18", "--data.features.weights", "null", "--data.features.num_frames", "4",
            "--data.features.image_size", "null", "--accelerator", "cpu", "--batch-size", "1", "--num-workers", "0",
            "--no-progress"]


@pytest.mark.slow
def test_extraction_killed_mid_run_resumes_to_the_clean_result(dataset, tiny_datamodule_args, tmp_path):
    from captioner.cli.extract import main
    from captioner.features.cache import REPORT_NAME

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "extract_features.py"),
                             *_extract_argv(dataset, killed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not list(killed.rglob("clip*.npy")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a few more clips, and maybe a write in flight
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    cache_dir = killed / dataset.name / "resnet18-random-4f"
    done = sorted(cache_dir.glob("*.npy"))
    assert 0 < len(done) < 25, "the kill did not land mid-run"
    assert all(np.load(p).shape == (4, 512) for p in done)  # whatever the moment of the kill: only whole files
    assert not (cache_dir / REPORT_NAME).exists()

    assert main(_extract_argv(dataset, killed)) == 0  # the rerun extracts what is missing
    names = sorted(p.name for p in cache_dir.iterdir())  # no temporary file left over
    assert (cache_dir / REPORT_NAME).read_text().startswith("broken\t")
    # a clean run of the same clips with the same spec: the session's DataModule extraction of the tiny dataset
    dm = tiny_datamodule_args
    clean_dir = Path(dm["features_dir"]) / Path(dm["data_dir"]).name / cache_dir.name
    clean = sorted(p.name for p in clean_dir.glob("*.npy"))
    assert names == sorted(clean + [REPORT_NAME]) and len(clean) == 25
    for name in clean:
        np.testing.assert_allclose(np.load(cache_dir / name).astype(np.float32),
                                   np.load(clean_dir / name).astype(np.float32), rtol=1e-2, atol=1e-2)
