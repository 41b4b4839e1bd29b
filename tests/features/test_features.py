"""The feature cache (`features/cache.py`) and the one frames-to-features core with its two drivers
(`features/extract.py`): in this process and Lightning's predict loop write the same files and failures."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.config import FeatureSpec
from captioner.data.datasets import load_annotations
from captioner.features.cache import REPORT_NAME, FeatureCache, format_failures, parse_failures
from captioner.features.extract import CroppedClips, clip_loader, extract_in_process, run_extraction
from captioner.models.encoder import FrameEncoder
from captioner.video import read_frames

SPEC = FeatureSpec(backbone="resnet18", weights=None, num_frames=4, image_size=64)  # cheap on a CPU


def test_cache_round_trip_in_float16(tmp_path):
    cache = FeatureCache(tmp_path, SPEC)
    assert cache.dir == tmp_path / SPEC.key and not cache.has("a")
    feats = torch.randn(4, 6)
    cache.save("a", feats)
    assert cache.has("a") and np.load(cache.path("a")).dtype == np.float16
    assert torch.equal(cache.load("a"), feats.half().float())
    assert not list(cache.dir.glob(".*.tmp.npy"))  # written, then renamed


def test_odd_ids_get_distinct_files_inside_the_folder(tmp_path):
    cache = FeatureCache(tmp_path, SPEC)
    ids = ["../x", "a b", "a_b", "vidéo", ".hidden", "plain"]
    paths = [cache.path(i) for i in ids]
    assert len(set(paths)) == len(ids) and all(p.parent == cache.dir for p in paths)
    assert cache.path("plain").name == "plain.npy"


def test_failure_report_round_trip_and_removal(tmp_path):
    cache = FeatureCache(tmp_path, SPEC)
    assert cache.failures() == []
    failures = [("a", "bad\nfile"), ("b", "no  such   file")]
    assert parse_failures(format_failures(failures)) == [("a", "bad file"), ("b", "no such file")]
    cache.write_failures(failures)
    assert cache.report_path.name == REPORT_NAME and cache.failures() == [("a", "bad file"), ("b", "no such file")]
    cache.write_failures([])
    assert not cache.report_path.exists()


@pytest.fixture(scope="module")
def items(tiny_dataset, tmp_path_factory) -> list[tuple[str, str]]:
    """Five clips of the tiny dataset and an unreadable one in the middle."""
    broken = tmp_path_factory.mktemp("broken") / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    clips = [(c.id, c.path) for c in load_annotations(tiny_dataset / "annotations.json")[:5]]
    return clips[:2] + [("broken", str(broken))] + clips[2:]


def test_cropped_clips_are_the_encoders_crop_of_the_sampled_frames(items):
    encoder = FrameEncoder.from_spec(SPEC)
    clips = CroppedClips(items, SPEC.num_frames, encoder.preprocessing)
    vid, cropped, err = clips[0]
    frames = read_frames(items[0][1], SPEC.num_frames, encoder.preprocessing.resize_size)
    assert vid == items[0][0] and err is None and cropped.dtype == torch.uint8
    assert cropped.shape == (4, 3, 64, 64) and torch.equal(cropped, encoder.crop(frames))
    vid, cropped, err = clips[2]
    assert (vid, cropped) == ("broken", None) and "broken.mp4" in err
    batches = list(clip_loader(items, SPEC, encoder.preprocessing, batch_size=4))
    assert [b["ids"] for b in batches] == [[items[0][0], items[1][0], items[3][0]], [items[4][0], items[5][0]]]
    assert batches[0]["frames"].shape == (3, 4, 3, 64, 64) and batches[0]["failures"][0][0] == "broken"


@pytest.mark.slow
def test_both_drivers_write_the_same_files_and_list_the_same_failures(items, tmp_path):
    """`extract_in_process` (training's `prepare_data`) and `run_extraction` (`captioner extract`) over one core."""
    own = FeatureCache(tmp_path / "own", SPEC)
    own_failures = extract_in_process(SPEC, items, own, batch_size=4, progress=False)
    loop = FeatureCache(tmp_path / "loop", SPEC)
    loop_failures = run_extraction(SPEC, items, loop, accelerator="cpu", batch_size=4, num_workers=0, progress=False)
    assert [vid for vid, _ in own_failures] == ["broken"] and own_failures == loop_failures
    assert loop.failures() == loop_failures  # the predict loop writes the report; training writes its own
    names = sorted(p.name for p in own.dir.glob("*.npy"))
    assert names == sorted(p.name for p in loop.dir.glob("*.npy")) and len(names) == 5
    for name in names:
        np.testing.assert_array_equal(np.load(own.dir / name), np.load(loop.dir / name))
    assert extract_in_process(SPEC, items[:2], own, progress=False) == []  # cached clips are skipped
