"""The same settings give the same run: the generated dataset byte for byte, and the random state training starts
from, whether or not the data had to be generated and extracted first."""

import random

import numpy as np
import pytest
import torch

from captioner.data.synthetic import generate_synthetic_dataset


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_synthetic_dataset_is_the_same_bytes_every_time(tmp_path):
    kwargs = dict(num_train=12, num_val=4, num_test=4, seed=3, side=96, num_frames=12, progress=False)
    generate_synthetic_dataset(tmp_path / "a", **kwargs)
    generate_synthetic_dataset(tmp_path / "b", **kwargs)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 21 and a.keys() == b.keys()
    assert [str(k) for k in a if a[k] != b[k]] == []


@pytest.mark.slow
def test_preparing_the_data_leaves_the_random_state_as_it_was(tiny_dataset, tmp_path):
    from pytorch_lightning import seed_everything

    from captioner.config import FeatureSpec
    from captioner.data.datamodule import CaptioningDataModule

    def draws():
        return torch.rand(4).tolist(), random.random(), np.random.rand()

    seed_everything(7)
    expected = draws()
    dm = CaptioningDataModule(data_dir=str(tiny_dataset), synthetic=False, features_dir=str(tmp_path / "features"),
                              features=FeatureSpec(backbone="resnet18", weights=None, num_frames=4, image_size=None),
                              batch_size=8, extract_batch_size=8, num_workers=1)
    seed_everything(7)
    dm.prepare_data()  # extracts every clip's features: a DataLoader with a worker, drawing a seed
    assert len(list((tmp_path / "features").rglob("*.npy"))) == 25
    assert draws() == expected
