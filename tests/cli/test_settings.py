"""Settings refused before any work, in one line: backbone and weights names, offline weights, resuming with other
settings, a missing dataset; and training says which feature cache it fills."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import pytest
import torch
from conftest import moving_square, tiny_args, with_features

from captioner.cli.caption import main as caption_command
from captioner.cli.train import exit_on_user_error, train_main
from captioner.config import FeatureSpec
from captioner.data.datamodule import CaptioningDataModule
from captioner.errors import SettingsError, UserError, WeightsUnavailableError

REPO = Path(__file__).resolve().parents[2]
WEIGHTS_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1
OFFLINE_ALTERNATIVE = ("or use a backbone whose weights come with the package, no download needed: "
                       "--data.features.backbone mobilenet_v2 --data.features.weights IMAGENET1K_V1, "
                       "or --data.features.backbone efficientnet_lite0 --data.features.weights DEFAULT")


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# item 10: backbone and weights names


@pytest.mark.parametrize("kwargs, message", [
    (dict(backbone="resnet_152"), "unknown backbone 'resnet_152' (did you mean resnet152"),
    (dict(backbone="resnet152", weights="IMAGENET1K_V3"),
     "unknown weights 'IMAGENET1K_V3' for resnet152: its weights are IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"),
    (dict(backbone="efficientnet_lite0", weights="IMAGENET1K_V1"),
     "efficientnet_lite0 has only its own ImageNet weights, named DEFAULT (or null for random weights)"),
    (dict(num_frames=0), "num_frames must be a whole number of at least 1"),
    (dict(seek="fast"), "seek must be one of exact, keyframe"),
])
def test_bad_names_are_one_line_with_the_valid_ones(kwargs, message):
    with pytest.raises(SettingsError) as err:
        FeatureSpec(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # callers catching ValueError still do
    # the DataModule makes its spec at once, so train, extract and evaluate all refuse before any work
    with pytest.raises(SettingsError):
        CaptioningDataModule(features=kwargs)


def test_good_names_still_make_their_cache_folders():
    f32 = dict(precision="32")  # float32 features keep the names caches had before `precision` existed
    assert FeatureSpec(**f32).key == "mobilenet_v2-IMAGENET1K_V1-8f"
    assert FeatureSpec("efficientnet_lite0", "DEFAULT", **f32).key == "efficientnet_lite0-DEFAULT-8f"
    assert FeatureSpec(weights=None, **f32).key == "mobilenet_v2-random-8f"
    assert FeatureSpec("resnet152", "IMAGENET1K_V1", 20, **f32).key == "resnet152-IMAGENET1K_V1-20f"
    assert FeatureSpec("resnet18", None, 4, seek="keyframe", **f32).key == "resnet18-random-4f-keyframe"
    assert FeatureSpec("resnet18", None, 4, seek="keyframe", precision="bf16").key == "resnet18-random-4f-keyframe-bf16"


@pytest.mark.parametrize("native, resolved", [(True, "bf16"), (False, "32")])
def test_auto_precision_is_decided_once_by_the_cpu_and_stored_resolved(monkeypatch, native, resolved):
    import captioner.config

    monkeypatch.setattr(captioner.config, "cpu_has_native_bf16", lambda: native)
    spec = FeatureSpec("resnet18", None, 4, precision="auto")
    assert spec.precision == resolved and FeatureSpec("resnet18", None, 4, precision=32).precision == "32"
    assert FeatureSpec("resnet18", None, 4).precision == "32"  # the default: float32 (docs/results.md says why)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec  # what a checkpoint stores reads back the same
    # a spec stored before `precision` existed meant float32, whatever this machine would choose now
    assert FeatureSpec.from_dict({"backbone": "resnet18", "weights": None, "num_frames": 4}).precision == "32"
    with pytest.raises(SettingsError, match="precision must be one of auto, 32, bf16"):
        FeatureSpec("resnet18", None, 4, precision="fp16")


def test_train_with_a_bad_name_is_one_line_and_exit_2(tiny_datamodule_args, tmp_path, capsys):
    args = {**tiny_datamodule_args, "features_dir": str(tmp_path / "features")}
    with pytest.raises(SystemExit) as exit_info:
        train_main(tiny_args(args, tmp_path / "run", "--data.features.backbone=resnet_152"))
    assert exit_info.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("captioner train: error: unknown backbone 'resnet_152' (did you mean resnet152")
    assert not (tmp_path / "features").exists()


@pytest.mark.parametrize("flag, new", [("--data.num_frames=16", "--data.features.num_frames"),
                                       ("--data.backbone=resnet18", "--data.features.backbone")])
def test_train_with_an_old_flat_feature_flag_names_the_new_one(flag, new, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main([flag, f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (f"captioner train: error: {flag.split('=')[0]} is now {new} (the feature settings are one "
                    f"data.features section)")


def test_extract_with_a_bad_name_is_one_line_and_exit_2(tiny_dataset, tmp_path, capsys):
    from captioner.cli.extract import main

    argv = ["--data.data_dir", str(tiny_dataset), "--data.features_dir", str(tmp_path), "--data.features.backbone",
            "resnet18", "--data.features.weights", "IMAGENET1K_V3", "--accelerator", "cpu", "--no-progress"]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == ("captioner extract: unknown weights 'IMAGENET1K_V3' for resnet18: its weights are "
                    "IMAGENET1K_V1, DEFAULT, or null for random weights")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# item 11: a missing dataset; the project's errors are one line, others keep their traceback


def test_a_missing_dataset_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main([f"--data.data_dir={tmp_path / 'msvdd'}", "--data.synthetic=false",
                    f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"captioner train: error: {tmp_path / 'msvdd' / 'annotations.json'} not found" in err


@pytest.mark.slow
def test_train_script_with_a_missing_dataset_prints_the_line_alone(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--data.data_dir", "data/msvdd",
                           "--data.synthetic", "false", f"--trainer.default_root_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    # alone: Lightning's start-up lines ("Seed set to 0", "GPU available ...") are held back until the checks pass
    assert proc.stderr.strip() == (
        "captioner train: error: data/msvdd/annotations.json not found (see data/README.md to prepare a dataset, "
        "or check --data.data_dir)")


def test_startup_logs_are_held_until_released_and_kept_for_a_bug(monkeypatch):
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    from captioner.cli.train import drop_lightning_tips, startup_logs_held

    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    top = logging.getLogger("pytorch_lightning")
    monkeypatch.setattr(top, "handlers", [Collect()])
    log = logging.getLogger("pytorch_lightning.test_startup")
    log.setLevel(logging.INFO)
    drop_lightning_tips()  # as train_main does
    with pytest.raises(SettingsError):
        with startup_logs_held():
            log.info("Seed set to 0")
            raise SettingsError("bad")  # the user's error: its one line (printed by exit_on_user_error) stands alone
    assert seen == []
    with startup_logs_held() as release:
        log.info("Seed set to 0")
        rank_zero_info("\N{ELECTRIC LIGHT BULB} Tip: install something")
        assert seen == []
        release()
        log.info("GPU available: False")
        rank_zero_info("\N{ELECTRIC LIGHT BULB} Tip: for seamless uploads")  # tips stay away during the run too
    assert seen == ["Seed set to 0", "GPU available: False"]
    seen.clear()
    with pytest.raises(RuntimeError):
        with startup_logs_held():
            log.info("Seed set to 0")
            raise RuntimeError("a bug")  # not the user's: what Lightning said comes before the traceback
    log.info("after")  # the handlers are back
    assert seen == ["Seed set to 0", "after"]


def test_only_the_projects_own_errors_lose_their_traceback(capsys):
    @exit_on_user_error
    def wrapped(err):
        raise err

    with pytest.raises(SystemExit) as exit_info:
        wrapped(SettingsError("bad setting: do this"))
    assert exit_info.value.code == 2 and capsys.readouterr().err == "captioner train: error: bad setting: do this\n"
    try:  # as LightningCLI (jsonargparse) wraps the errors of the classes it instantiates
        raise ValueError("Does not validate against any of the Union subtypes") from UserError("the real reason")
    except ValueError as outer:
        with pytest.raises(SystemExit):
            wrapped(outer)
    assert capsys.readouterr().err == "captioner train: error: the real reason\n"
    with pytest.raises(RuntimeError, match="a bug"):  # not a user error: the traceback is what helps
        wrapped(RuntimeError("a bug"))


# ----------------------------------------------------------------------------------------------------------------
# item 4: a torchvision backbone whose weights are neither here nor downloadable


@pytest.fixture
def offline(tmp_path, monkeypatch) -> SimpleNamespace:
    """An empty $TORCH_HOME and no network: every download fails as it does without one (`home`: $TORCH_HOME,
    `attempts`: the URLs tried)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return SimpleNamespace(home=home, attempts=attempts)


def _offline_message(home: Path) -> str:
    return (f"backbone resnet18 with weights IMAGENET1K_V1 needs {WEIGHTS_FILE}, which is not in "
            f"{home / 'hub' / 'checkpoints'} and could not be downloaded (URLError: <urlopen error [Errno -3] "
            f"Temporary failure in name resolution>): download once where there is network; they go to "
            f"$TORCH_HOME/hub/checkpoints")


def test_offline_weights_are_a_clear_library_error(offline):
    from captioner.models.encoder import FrameEncoder

    with pytest.raises(WeightsUnavailableError) as err:
        FrameEncoder("resnet18", weights="IMAGENET1K_V1")
    assert str(err.value).startswith(_offline_message(offline.home)) and "\n" not in str(err.value)
    assert isinstance(err.value, UserError) and isinstance(err.value, OSError)


def test_weights_already_in_torch_home_need_no_network(offline):
    from torchvision.models import resnet18

    from captioner.models.encoder import FrameEncoder

    torch.manual_seed(1)
    state = resnet18().state_dict()
    (offline.home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, offline.home / "hub" / "checkpoints" / WEIGHTS_FILE)
    enc = FrameEncoder("resnet18", weights="IMAGENET1K_V1")
    assert offline.attempts == []
    assert torch.equal(enc.net.conv1.weight, state["conv1.weight"])


@pytest.fixture
def resnet_checkpoint(tmp_path) -> Path:
    """A tiny captioner checkpoint whose features come from ResNet-18 with ImageNet weights."""
    from test_api import save_tiny_checkpoint

    from captioner.vocab import SPECIALS

    hp = {"vocab": [*SPECIALS, "a", "square"], "feature_dim": 512, "embed_dim": 8, "hidden_dim": 8,
          "feature_spec": FeatureSpec("resnet18", "IMAGENET1K_V1", num_frames=4).to_dict(), "beam_size": 1,
          "max_len": 3}
    return save_tiny_checkpoint(hp, tmp_path / "resnet.ckpt")


def test_caption_cli_blames_the_weights_not_the_videos(offline, resnet_checkpoint, tmp_path, monkeypatch, capsys):
    import captioner.video as video
    from captioner.data.synthetic import write_mp4

    videos = []
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_mp4(moving_square(8, 32), tmp_path / name)
        videos.append(str(tmp_path / name))
    read = []
    monkeypatch.setattr(video, "read_frames", lambda path, *a, **k: read.append(path))
    status = caption_command([*videos, "--checkpoint", str(resnet_checkpoint), "--device", "cpu",
                              "--batch-size", "1"])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert _one_line(err).startswith(f"captioner caption: error: {_offline_message(offline.home)}")
    assert read == [] and len(offline.attempts) == 1  # no video touched, one download tried, not one per batch


def test_library_captioning_raises_the_weights_error(offline, resnet_checkpoint, tiny_mp4):
    from captioner import VideoCaptioner

    model = VideoCaptioner.from_checkpoint(resnet_checkpoint)  # the encoder is built on first use
    with pytest.raises(WeightsUnavailableError, match=WEIGHTS_FILE):
        next(model.caption_results([tiny_mp4]))
    with pytest.raises(WeightsUnavailableError, match="download once where there is network"):
        model.caption([tiny_mp4])


def test_extract_without_the_weights_is_one_line_and_exit_2(offline, tiny_dataset, tmp_path, capsys):
    from captioner.cli.extract import main

    features = tmp_path / "features"
    argv = ["--data.data_dir", str(tiny_dataset), "--data.features_dir", str(features), "--data.features.backbone",
            "resnet18", "--data.features.weights", "IMAGENET1K_V1", "--data.features.num_frames", "4",
            "--accelerator", "cpu", "--num-workers", "0", "--no-progress"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert _one_line(err) == f"captioner extract: {_offline_message(offline.home)} (default ~/.cache/torch/hub/" \
                             f"checkpoints), or copy https://download.pytorch.org/models/{WEIGHTS_FILE} there; " \
                             f"{OFFLINE_ALTERNATIVE}"
    assert not list(features.rglob("*.npy"))


def test_evaluate_without_the_weights_is_one_line_and_exit_2(offline, resnet_checkpoint, tiny_dataset, tmp_path,
                                                            capsys):
    from captioner.cli.evaluate import main

    argv = ["--checkpoint", str(resnet_checkpoint), "--data-dir", str(tiny_dataset), "--features-dir",
            str(tmp_path / "no_cache"), "--device", "cpu", "--no-meteor", "--no-progress",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2  # no clip is cached: they would be encoded from the video
    assert _one_line(capsys.readouterr().err).startswith(f"captioner evaluate: {_offline_message(offline.home)}")
    assert not (tmp_path / "out").exists()


def test_train_without_the_weights_is_one_line_and_exit_2(offline, tiny_datamodule_args, tmp_path, capsys):
    args = {**with_features(tiny_datamodule_args, weights="IMAGENET1K_V1"), "features_dir": str(tmp_path / "features")}
    with pytest.raises(SystemExit) as exit_info:
        train_main(tiny_args(args, tmp_path / "run"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"captioner train: error: {_offline_message(offline.home)}" in err
    assert not list((tmp_path / "features").rglob("*.npy"))


OFFLINE_TRAIN = """\
import sys
import urllib.error

import torch.hub


def no_network(url, *args, **kwargs):  # as a download fails without network
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


torch.hub.download_url_to_file = no_network
from captioner.cli.train import main

sys.exit(main())
"""


@pytest.mark.slow
def test_train_without_the_weights_says_so_before_lightning_starts(tiny_dataset, tmp_path):
    """Issue 23 item 12: the line came after Lightning's start-up lines and 3 "extracting them now" lines."""
    script = tmp_path / "offline_train.py"
    script.write_text(OFFLINE_TRAIN)
    home = tmp_path / "torch_home"  # empty: no weights cached
    env = {**os.environ, "TORCH_HOME": str(home), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), f"--data.data_dir={tiny_dataset}", "--data.synthetic=false",
                           f"--data.features_dir={tmp_path / 'features'}", "--data.features.backbone=resnet18",
                           "--data.features.weights=IMAGENET1K_V1", "--data.features.num_frames=4",
                           f"--trainer.default_root_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    # alone: no "Seed set to 0", "GPU available", "extracting them now", no process started, no video read
    line = _one_line(proc.stderr)
    assert line.startswith(f"captioner train: error: {_offline_message(home)}")
    assert line.endswith(OFFLINE_ALTERNATIVE)
    assert not (tmp_path / "features").exists() and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------
# item 5: training that must extract says so, and how to do it apart


def test_training_says_which_cache_it_fills_and_how(tiny_datamodule_args, tmp_path, caplog):
    from captioner.cli.extract import parse

    features = tmp_path / "features"
    dataset = Path(tiny_datamodule_args["data_dir"]).name
    (features / dataset / "resnet152-IMAGENET1K_V1-20f").mkdir(parents=True)  # a cache of other settings
    args = {**with_features(tiny_datamodule_args, num_frames=2, image_size=32, seek="keyframe"),
            "features_dir": str(features)}
    dm = CaptioningDataModule(**args)
    with caplog.at_level(logging.WARNING, logger="captioner"):
        dm.prepare_data()
    text = caplog.text
    assert f"25 of 25 clips have no features in {dm.cache.dir}: extracting them now" in text
    assert f"other feature caches of {dataset} in {features / dataset}: resnet152-IMAGENET1K_V1-20f" in text
    assert f"to extract apart instead (1 CPU to N GPUs), stop and run: {dm.extract_command()}" in text
    assert len(list(dm.cache.dir.glob("*.npy"))) == 25  # then it extracts, as asked
    # the command it gives fills exactly this cache
    data, _ = parse(shlex.split(dm.extract_command())[2:])
    assert data.spec == dm.spec and data.cache.dir == dm.cache.dir
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="captioner"):
        CaptioningDataModule(**args).prepare_data()
    assert "extracting" not in caplog.text  # nothing to do: nothing said


# ----------------------------------------------------------------------------------------------------------------
# item 6: resuming with other settings


def test_resume_with_other_settings_is_one_line_before_any_work(trained, tiny_datamodule_args, tmp_path, capsys):
    _, _, ckpt = trained
    args = with_features(tiny_datamodule_args, num_frames=8)
    with pytest.raises(SystemExit) as exit_info:
        train_main(tiny_args(args, tmp_path / "run", f"--ckpt_path={ckpt}", "--model.hidden_dim=64",
                             "--model.temporal=lstm", "--model.lr=0.01", "--model.beam_size=3"))
    assert exit_info.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (f"captioner train: error: --ckpt_path {ckpt} was trained with other settings: "
                    f"data.features.num_frames 4 (now 8), model.hidden_dim 32 (now 64), model.temporal mean (now lstm); resume with the "
                    f"checkpoint's settings, or start a new run without --ckpt_path")
    assert not FeatureSpec("resnet18", None, 8).key in os.listdir(Path(args["features_dir"]) /
                                                                  Path(args["data_dir"]).name)  # nothing extracted
    assert not (tmp_path / "run").exists()


def test_resume_check_lets_training_settings_change(trained, tiny_datamodule_args, tmp_path):
    from captioner.cli.train import build_cli, check_resume_settings

    _, _, ckpt = trained
    cli = build_cli(tiny_args(tiny_datamodule_args, tmp_path, "--model.lr=0.01", "--model.beam_size=3",
                              "--model.max_len=7", "--model.dropout=0.1", "--data.batch_size=4"))
    check_resume_settings(str(ckpt), cli.model, cli.datamodule)  # no error
    check_resume_settings("last", cli.model, cli.datamodule)  # Lightning's own names are left to Lightning
    with pytest.raises(UserError, match="no such checkpoint file"):
        check_resume_settings(str(tmp_path / "nope.ckpt"), cli.model, cli.datamodule)
    other = tiny_args({**with_features(tiny_datamodule_args, seek="keyframe"), "min_word_count": 2}, tmp_path,
                      "--model.embed_dim=8", "--model.num_layers=2")
    cli = build_cli(other)
    with pytest.raises(SettingsError) as err:
        check_resume_settings(str(ckpt), cli.model, cli.datamodule)
    assert ("data.features.seek exact (now keyframe), data.min_word_count 1 (now 2), model.embed_dim 16 (now 8), "
            "model.num_layers 1 (now 2)") in str(err.value)
