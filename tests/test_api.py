"""The facade (`captioner.api`): `VideoCaptioner` loading a tiny trained checkpoint and its one loop over videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import moving_square

from captioner import GenerationConfig, VideoCaptioner
from captioner.data.synthetic import write_mp4
from captioner.device import resolve_device
from captioner.api import CaptionResult, expand_video_paths
from captioner.video import VideoReadError


def write_bad_videos(folder: Path) -> dict[str, Path]:
    """Files that must fail, by kind: missing, not a video, truncated, empty, no video stream."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good_source.mp4"
    write_mp4(moving_square(), good)
    data = good.read_bytes()
    files = {k: folder / f"{k}.mp4" for k in ("missing", "not_a_video", "truncated", "empty", "audio_only")}
    files["not_a_video"].write_text("this is text, not a video\n")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"].write_bytes(b"")
    with av.open(str(files["audio_only"]), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    good.unlink()
    return files


def save_tiny_checkpoint(hp: dict, path: Path) -> Path:
    """A checkpoint of an untrained model for the hyperparameters `hp` (vocab, feature_spec, feature_dim, sizes,
    generation settings), in the layout training writes."""
    from captioner.checkpointing import build_model
    from captioner.config import CONFIG_KEY, CaptionerConfig

    config = CaptionerConfig.from_hparams(hp)
    state = {f"model.{k}": v for k, v in build_model(hp, config).state_dict().items()}
    torch.save({"hyper_parameters": hp, CONFIG_KEY: config.to_dict(), "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def model(trained) -> VideoCaptioner:
    return VideoCaptioner.from_checkpoint(trained[2])


@pytest.fixture(scope="module")
def test_clips(tiny_dataset) -> list[Path]:
    return sorted((tiny_dataset / "videos").glob("*.mp4"))[-4:]


def test_generation_defaults_come_from_the_checkpoint(model, trained):
    # the tiny run trains with --model.beam_size=2 (tests/conftest.py)
    assert model.generation == GenerationConfig(beam_size=2, max_len=20, length_penalty=0.0, no_repeat_ngram=3)
    assert model.checkpoint_path == trained[2] and model.data_settings["data_dir"]


def test_expand_video_paths_sorts_directories_and_keeps_files(tmp_path):
    for name in ("b.mp4", "a.MOV", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    other = tmp_path / "other.bin"
    assert expand_video_paths([other, tmp_path]) == [other, tmp_path / "a.MOV", tmp_path / "b.mp4"]


@pytest.mark.slow
def test_one_bad_file_does_not_stop_the_others(model, test_clips, tmp_path):
    bad = write_bad_videos(tmp_path / "bad")
    folder = tmp_path / "folder"
    folder.mkdir()
    write_mp4(moving_square(16, 48), folder / "z.mp4")
    write_mp4(moving_square(8, 40), folder / "a.mp4")
    (tmp_path / "no_videos").mkdir()
    inputs = [test_clips[0], *bad.values(), test_clips[1], folder, tmp_path / "no_videos"]

    results = list(model.caption_results(inputs, batch_size=3))

    expected_order = [test_clips[0], *bad.values(), test_clips[1], folder / "a.mp4", folder / "z.mp4",
                      tmp_path / "no_videos"]
    assert [r.video for r in results] == [str(p) for p in expected_order]
    assert [r.ok for r in results] == [True] + [False] * len(bad) + [True, True, True, False]
    reasons = {r.video: r.error for r in results if not r.ok}
    assert "file not found" in reasons[str(bad["missing"])]
    assert "empty" in reasons[str(bad["empty"])]
    assert "no video stream" in reasons[str(bad["audio_only"])]
    assert "not a readable video" in reasons[str(bad["truncated"])]
    assert "no video files" in reasons[str(tmp_path / "no_videos")]
    good = [p for p in expected_order[:-1] if "bad" not in p.parts]
    captions = [r.caption for r in results if r.ok]
    assert all(isinstance(c, str) for c in captions)  # the tiny model may well say nothing
    # the same captions as the plain library call, which reads the same files in the same batches
    assert captions == model.caption(good, batch_size=3)
    record = results[0].to_dict()
    assert {k: record[k] for k in ("video", "caption")} == {"video": str(test_clips[0]), "caption": captions[0]}
    assert set(record) == {"video", "caption", "score", "familiarity", "in_domain"} and record["score"] <= 0
    assert set(results[1].to_dict()) == {"video", "error"}


def test_library_caption_raises_on_an_unreadable_file(model, test_clips, tmp_path):
    with pytest.raises(VideoReadError, match="missing.mp4: file not found"):
        model.caption([test_clips[0], tmp_path / "missing.mp4"])


def test_a_photo_is_not_captioned_as_a_video(model, trained, test_clips, tmp_path, capsys):
    """A photo, given as it is or renamed .mp4, is one error line naming it; the videos beside it are captioned."""
    import shutil

    from test_video import scikit_image_photos

    from captioner.cli.caption import main as caption_command

    jpeg, png = scikit_image_photos()
    renamed = tmp_path / "holiday.mp4"
    shutil.copy(jpeg, renamed)
    results = list(model.caption_results([jpeg, test_clips[0], renamed, png], batch_size=2))
    assert [r.ok for r in results] == [False, True, False, False]
    assert [r.error for r in results if not r.ok] == ["a still image (JPEG), not a video"] * 2 + [
        "a still image (PNG), not a video"]
    with pytest.raises(VideoReadError, match="holiday.mp4: a still image"):
        model.caption(renamed)
    # the command: one line for the photo, its caption for the video, and the status of a file that failed
    assert caption_command([str(renamed), str(test_clips[0]), "--checkpoint", str(trained[2])]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(test_clips[0])]
    assert f"captioner caption: {renamed}: a still image (JPEG), not a video" in err.splitlines()
    assert caption_command([str(renamed), "--checkpoint", str(trained[2])]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"captioner caption: {renamed}: a still image (JPEG), not a video",
                                              "captioner caption: 1 of 1 videos could not be captioned"]


class _WritesAFile:
    """Unpickling this object would create a file: a checkpoint that tries to run code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_cannot_run_code(tmp_path):
    from captioner import CheckpointError

    marker, evil = tmp_path / "code_ran", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab": ["a"], "payload": _WritesAFile(marker)}}, evil)
    with pytest.raises(CheckpointError, match="evil.ckpt: not a loadable checkpoint .*safe load refuses"):
        VideoCaptioner.from_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_captions_are_deterministic(model, trained, test_clips):
    first = model.caption(test_clips[2:])
    assert model.caption(test_clips[2:]) == first
    assert VideoCaptioner.from_checkpoint(trained[2]).caption(test_clips[2:]) == first


@pytest.mark.slow
def test_caption_accepts_a_directory_or_a_single_path(model, test_clips, tmp_path):
    for i, clip in enumerate(test_clips[:2]):
        (tmp_path / f"{i}.mp4").write_bytes(clip.read_bytes())
    assert model.caption(tmp_path) == model.caption(test_clips[:2])
    assert model.caption(str(test_clips[0])) == model.caption([test_clips[0]])


@pytest.mark.slow
def test_caption_frames_matches_captioning_the_file(model, test_clips):
    clips = [model.read_clip(p) for p in test_clips[:2]]  # each (T, H, W, 3) uint8
    assert clips[0].shape == (model.spec.num_frames, 256, 256, 3) and clips[0].dtype == torch.uint8
    expected = model.caption(test_clips[:2])
    assert model.caption_frames(torch.stack(clips)) == expected  # (B, T, H, W, 3)
    assert model.caption_frames(clips[1]) == expected[1:]  # one clip (T, H, W, 3)


def test_modules_have_the_documented_shapes(model):
    b, t = 2, model.spec.num_frames
    frames = torch.from_numpy(np.stack([moving_square(t, 64)] * b))  # (B, T, H, W, 3) uint8
    x = model.encoder.preprocess(frames)
    crop = model.encoder.preprocessing.crop_size
    assert x.shape == (b, t, 3, crop, crop) and x.dtype == torch.float32
    with torch.no_grad():
        feats = model.encoder(x)
        assert feats.shape == (b, t, model.encoder.feature_dim)
        video = model.pool(feats)
        assert video.shape == (b, model.encoder.feature_dim)
        ids = model.decoder.greedy(video, max_len=5)
    assert ids.shape[0] == b and 1 <= ids.shape[1] <= 5 and ids.dtype == torch.long
    assert isinstance(model.encoder, torch.nn.Module) and isinstance(model.decoder, torch.nn.Module)


def test_frames_override_and_generation_overrides(model, test_clips):
    assert model.read_clip(test_clips[0], num_frames=6).shape[0] == 6
    [result] = model.caption_results([test_clips[0]], num_frames=6, beam_size=1, max_len=3)
    assert isinstance(result, CaptionResult) and result.ok
    assert len(result.caption.split()) <= 3


@pytest.mark.slow
def test_cached_features_skip_the_video_and_give_the_same_captions(model, test_clips):
    """The loop's `features` hook (`evaluate`'s feature cache): a path it knows is not read, and its features give
    the caption the video gives; `on_clip` sees only the clips read."""
    feats = model.encoder.eval().encode_clips([model.read_clip(p) for p in test_clips])  # (4, T, D)
    known = {str(test_clips[1]): feats[1].cpu(), str(test_clips[3]): feats[3].cpu()}
    read = []
    results = list(model.caption_results(test_clips, batch_size=3, features=known.get,
                                         on_clip=lambda path, frames: read.append(path)))
    assert read == [str(test_clips[0]), str(test_clips[2])]
    assert [r.caption for r in results] == model.caption(test_clips, batch_size=3)
    assert [r.caption for r in results] == model.caption_features(feats)
    missing = test_clips[0].with_name("missing.mp4")
    [gone, cached] = model.caption_results([missing, test_clips[1]], features=known.get)
    assert "file not found" in gone.error and cached.caption == results[1].caption


def test_generation_settings_are_merged_once_before_any_video_is_read(model, test_clips, monkeypatch):
    import captioner.video as video

    monkeypatch.setattr(video, "read_frames", lambda *a, **k: pytest.fail("a video was read"))
    with pytest.raises(TypeError, match="unknown generation setting\\(s\\): beam"):
        model.caption(test_clips[:1], beam=1)
    monkeypatch.undo()
    greedy = GenerationConfig(beam_size=1, max_len=3)
    assert model.caption(test_clips[:2], beam_size=1, max_len=3) == \
        [r.caption for r in model.caption_results(test_clips[:2], generation=greedy)]
    assert model.generation.beam_size == 2  # the checkpoint's settings stay as they were


def test_resolve_device():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_find_checkpoint_prefers_the_best_score_then_the_newest_then_last(tmp_path):
    import os

    from captioner.checkpointing import CheckpointError, find_checkpoint

    first, resumed = tmp_path / "version_0" / "checkpoints", tmp_path / "version_1" / "checkpoints"
    for folder in (first, resumed):
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"x")
    (first / "epoch03-bleu4_0.5000.ckpt").write_bytes(b"x")
    assert find_checkpoint(tmp_path) == first / "epoch03-bleu4_0.5000.ckpt"  # a best checkpoint beats any last.ckpt
    (resumed / "epoch05-bleu4_0.4000.ckpt").write_bytes(b"x")  # newer, but worse: the run's best stays the first
    assert find_checkpoint(tmp_path) == first / "epoch03-bleu4_0.5000.ckpt"
    assert find_checkpoint(resumed) == resumed / "epoch05-bleu4_0.4000.ckpt"  # a version folder: its own best
    (resumed / "epoch07-bleu4_0.5000-v1.ckpt").write_bytes(b"x")  # a tie: the newer one
    os.utime(first / "epoch03-bleu4_0.5000.ckpt", (1, 1))
    assert find_checkpoint(tmp_path) == resumed / "epoch07-bleu4_0.5000-v1.ckpt"
    assert find_checkpoint(first / "last.ckpt") == first / "last.ckpt"  # a file is itself
    for f in tmp_path.rglob("epoch*.ckpt"):
        f.unlink()
    os.utime(first / "last.ckpt", (1, 1))
    assert find_checkpoint(tmp_path) == resumed / "last.ckpt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in this folder"):
        find_checkpoint(empty)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        find_checkpoint(tmp_path / "nope.ckpt")


def test_find_checkpoint_refuses_a_folder_above_several_runs(tmp_path):
    from captioner.checkpointing import CheckpointError, find_checkpoint, run_folder

    runs = tmp_path / "runs"
    synthetic, msvd = runs / "synthetic" / "logs", runs / "msvd" / "logs"
    for folder, name in ((synthetic / "version_0", "epoch09-bleu4_0.6000.ckpt"),
                         (synthetic / "version_1", "epoch12-bleu4_0.6100.ckpt"),
                         (msvd / "version_0", "epoch20-bleu4_0.4200.ckpt")):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / name).write_bytes(b"x")
    assert run_folder(synthetic / "version_1" / "checkpoints" / "last.ckpt") == runs / "synthetic"
    # one run, resumed into a second version folder: one run, its best across the versions
    assert find_checkpoint(runs / "synthetic") == synthetic / "version_1" / "checkpoints" / "epoch12-bleu4_0.6100.ckpt"
    assert find_checkpoint(synthetic) == find_checkpoint(runs / "synthetic")
    with pytest.raises(CheckpointError) as err:
        find_checkpoint(runs)  # the synthetic BLEU is higher, but not comparable with MSVD's
    message = str(err.value)
    assert "\n" not in message and "2 runs" in message
    assert f"({runs / 'msvd'}, {runs / 'synthetic'})" in message and "pass one run folder" in message
    # a run with only last.ckpt beside one with best checkpoints is still another run
    msvd_ckpts = msvd / "version_0" / "checkpoints"
    (msvd_ckpts / "epoch20-bleu4_0.4200.ckpt").rename(msvd_ckpts / "last.ckpt")
    with pytest.raises(CheckpointError, match="2 runs"):
        find_checkpoint(runs)
