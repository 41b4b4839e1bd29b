"""CaptioningDataModule: one typed `features` argument (flags, YAML, a plain dict in checkpoints), the extract
command it gives, old flat flags, prepare and setup on tiny data."""

from pathlib import Path

import pytest
import torch

from captioner.cli.data_flags import renamed_config_key, renamed_data_flag, spell_feature_nulls
from captioner.config import FeatureSpec
from captioner.data.datamodule import CaptioningDataModule


def test_features_is_one_typed_argument_kept_as_a_plain_dict(tmp_path):
    spec = FeatureSpec(backbone="resnet18", weights=None, num_frames=16, image_size=64, seek="keyframe")
    typed = CaptioningDataModule(data_dir=str(tmp_path / "tiny"), features_dir=str(tmp_path), features=spec)
    plain = CaptioningDataModule(data_dir=str(tmp_path / "tiny"), features_dir=str(tmp_path),
                                 features=dict(backbone="resnet18", weights=None, num_frames=16, image_size=64,
                                               seek="keyframe"))
    assert typed.spec == plain.spec == spec and typed.cache.dir == tmp_path / "tiny" / spec.key
    assert type(typed.hparams["features"]) is dict and FeatureSpec(**typed.hparams["features"]) == spec
    assert CaptioningDataModule().spec == FeatureSpec()


def test_training_flags_and_yaml_reach_the_spec(tmp_path):
    from captioner.cli.train import build_cli

    cli = build_cli(["--data.features.num_frames=16", "--data.features.image_size=null",
                     "--data.features.weights", "null", "--data.features.seek=keyframe",
                     f"--trainer.default_root_dir={tmp_path}"])
    assert cli.datamodule.spec == FeatureSpec(weights=None, num_frames=16, image_size=None, seek="keyframe")
    assert cli.datamodule.hparams.features["num_frames"] == 16


def test_nulls_are_given_as_json_and_other_flags_untouched():
    assert spell_feature_nulls(["--data.features.image_size=null", "--data.features.weights", "null",
                                "--data.features.num_frames", "4", "--model.x", "null"]) == [
        "--data.features", '{"image_size": null}', "--data.features", '{"weights": null}',
        "--data.features.num_frames", "4", "--model.x", "null"]


@pytest.mark.parametrize("args, line", [
    (["--data.num_frames=16"], "--data.num_frames is now --data.features.num_frames"),
    (["--data.seek", "keyframe"], "--data.seek is now --data.features.seek"),
    (["--num-frames", "16"], "--num-frames is now --data.features.num_frames"),
    (["--no-fast-seek"], "--no-fast-seek is now --data.features.seek exact"),
    (["--features-dir", "x"], "--features-dir is now --data.features_dir"),
])
def test_old_flat_flags_name_the_new_one(args, line):
    assert renamed_data_flag(args).startswith(line)
    assert renamed_data_flag(["--data.features.num_frames=16", "--data.batch_size", "8"]) is None


def test_extract_command_fills_this_cache(tmp_path):
    from captioner.cli.extract import parse

    dm = CaptioningDataModule(data_dir=str(tmp_path / "tiny"), features_dir=str(tmp_path),
                              features=FeatureSpec("resnet18", None, 6, image_size=None, spatial_grid=2))
    command = dm.extract_command()
    assert command.startswith(f"captioner extract --data.data_dir {tmp_path / 'tiny'} --data.features_dir {tmp_path}")
    data, _ = parse(command.split()[2:])
    assert data.spec == dm.spec and data.cache.dir == dm.cache.dir


def test_prepare_and_setup_on_tiny_data(tiny_datamodule_args):
    dm = CaptioningDataModule(**tiny_datamodule_args)
    state = torch.random.get_rng_state()
    dm.prepare_data()  # cached already: nothing to do, and the random state is untouched either way
    assert torch.equal(torch.random.get_rng_state(), state)
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 16, "val": 5, "test": 4}
    assert dm.feature_dim == 512 and len(dm.vocab) > 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["feats"].shape[1:] == (4, 512)


def test_a_trained_checkpoint_loads_with_weights_only(trained):
    _, _, ckpt = trained
    loaded = torch.load(ckpt, map_location="cpu", weights_only=True)
    features = loaded["datamodule_hyper_parameters"]["features"]
    assert type(features) is dict and FeatureSpec(**features) == FeatureSpec("resnet18", None, 4)
    assert Path(loaded["datamodule_hyper_parameters"]["data_dir"]).name.startswith("synthetic")


def test_an_old_flat_feature_key_in_a_config_file_names_the_new_one(tmp_path, capsys):
    from captioner.cli.extract import main as extract_main
    from captioner.cli.train import train_main

    old = tmp_path / "old.yaml"
    old.write_text("data:\n  data_dir: data/synthetic\n  num_frames: 16\n")
    line = f"{old}: data.num_frames is now data.features.num_frames"
    assert renamed_config_key(["--config", str(old)]).startswith(line)
    assert renamed_config_key([f"--config={old}", "--data.batch_size", "8"]).startswith(line)
    new = tmp_path / "new.yaml"
    new.write_text("data:\n  init_args:\n    features:\n      num_frames: 16\n")
    assert renamed_config_key(["-c", str(new), "-c", str(tmp_path / "missing.yaml")]) is None
    with pytest.raises(SystemExit) as exit_:
        train_main(["--config", str(old)])
    message = renamed_config_key(["-c", str(old)])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip() == f"captioner train: error: {message}"
    assert extract_main(["--config", str(old)]) == 2
    assert line in capsys.readouterr().err


def test_check_ready_wants_the_weights_only_when_clips_are_left_to_encode(tiny_datamodule_args, tmp_path,
                                                                           no_network):
    """Issue 23 item 12: training checks the weights before it starts (not in the middle of its first extraction),
    and only when it has clips to encode: on a full cache it trains offline."""
    import numpy as np

    from captioner.data.datasets import load_annotations
    from captioner.errors import WeightsUnavailableError

    spec = dict(backbone="resnet18", weights="IMAGENET1K_V1", num_frames=4)
    dm = CaptioningDataModule(**{**tiny_datamodule_args, "features": spec, "features_dir": str(tmp_path / "f")})
    with pytest.raises(WeightsUnavailableError, match="resnet18-f37072fd.pth.*--data.features.backbone "
                                                      "efficientnet_lite0 --data.features.weights DEFAULT$"):
        dm.check_ready()
    assert len(no_network) == 1 and not (tmp_path / "f").exists()
    clips = load_annotations(dm.annotations_path)
    for clip in clips[1:]:
        dm.cache.save(clip.id, torch.zeros(4, 512))
    with pytest.raises(WeightsUnavailableError):
        dm.check_ready()  # one clip left
    dm.cache.write_failures([(clips[0].id, "not a video")])
    dm.check_ready()  # nothing left to encode (the unreadable clip is left out): no weights needed
    np.save(dm.cache.path(clips[0].id), np.zeros((4, 512), np.float16))
    dm.cache.write_failures([])
    dm.check_ready()
    assert len(no_network) == 2
    # a synthetic set still to generate is encoded next: refused before a single clip is made
    synthetic = CaptioningDataModule(data_dir=str(tmp_path / "synthetic"), features=spec,
                                     features_dir=str(tmp_path / "f"))
    with pytest.raises(WeightsUnavailableError):
        synthetic.check_ready()
    assert not (tmp_path / "synthetic").exists()
    random = CaptioningDataModule(data_dir=str(tmp_path / "synthetic"), features={**spec, "weights": None})
    random.check_ready()  # random weights need no file
    assert len(no_network) == 3


def test_workers_are_capped_at_the_cpus_there_are(tiny_datamodule_args, monkeypatch):
    """Issue 23 item 14: `num_workers: 8` on a 2-CPU machine made torch warn at every loader it started."""
    import os

    from captioner.features.extract import usable_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [usable_workers(n) for n in (0, 1, 2, 8)] == [0, 1, 2, 2]
    dm = CaptioningDataModule(**{**tiny_datamodule_args, "num_workers": 8, "features_in_memory": False})
    dm.setup("fit")
    loaders = [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()]
    assert [loader.num_workers for loader in loaders] == [2, 2, 2]
    assert dm.hparams.num_workers == 8  # the setting itself is kept: a bigger machine uses its 8
    dm.hparams.train_items = "clips"
    assert dm.train_dataloader().num_workers == 2
