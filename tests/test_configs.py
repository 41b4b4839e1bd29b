"""Every YAML file in configs/ parses into a model, a datamodule and a trainer (nothing is run)."""

from pathlib import Path

import pytest
from pytorch_lightning import LightningDataModule, LightningModule

from captioner.cli.train import CONFIG_DIR, build_cli

CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_there_are_configs():
    assert (CONFIG_DIR / "synthetic.yaml") in CONFIGS


# files that only change part of a run, layered over a full config (the README's usage)
OVERLAYS = {"temporal", "trainer"}


def base_for(config: Path) -> list[str]:
    if config.parent.name not in OVERLAYS:
        return []
    return ["--config", str(CONFIG_DIR / ("msvd.yaml" if config.parent.name == "trainer" else "synthetic.yaml"))]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_config_parses(config: Path, tmp_path):
    cli = build_cli(base_for(config) + ["--config", str(config), f"--trainer.default_root_dir={tmp_path}"])
    assert isinstance(cli.model, LightningModule)
    assert isinstance(cli.datamodule, LightningDataModule)


def test_no_config_means_the_synthetic_default(tmp_path):
    from captioner.data.datamodule import CaptioningDataModule
    from captioner.systems.captioning import CaptioningSystem

    cli = build_cli([f"--trainer.default_root_dir={tmp_path}"])
    assert isinstance(cli.model, CaptioningSystem) and isinstance(cli.datamodule, CaptioningDataModule)
    assert cli.datamodule.spec.image_size == 160 and cli.datamodule.hparams.features["image_size"] == 160
