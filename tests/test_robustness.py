"""Bad input at every layer (tests/badinputs.py), annotation edge cases, path safety, checkpoint trust, atomic writes.

Each bad input must give one clear line naming the file and the problem, and the rest of the work goes on.
README.md, "What happens when things go wrong", tabulates what these tests check.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from badinputs import NAMES
from captioner import CheckpointError, VideoCaptioner
from captioner.data.datasets import CaptionPairs, load_annotations
from captioner.features.cache import FeatureCache, FeatureSpec, extract_features
from captioner.data.video import VideoReadError, _decode, _decode_with_pyav, read_frames
from captioner.data.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
SPEC = FeatureSpec(backbone="resnet18", weights=None, num_frames=4, image_size=64)  # cheap on a CPU
# what each layer says for a directory: sampling and extraction read it as a file, the CLI as a folder of videos
CLI_REASON = {"directory": "directory contains no video files"}


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# Frame sampling


@pytest.mark.parametrize("name", NAMES)
def test_frame_sampling(bad_corpus, name):
    case = bad_corpus[name]
    if not case.readable:
        with pytest.raises(VideoReadError) as err:
            read_frames(case.path, num_frames=8, short_side=64)
        message = str(err.value)
        assert message.startswith(f"{case.path}: ") and case.reason in message and "\n" not in message
        assert err.value.path == str(case.path)
        return
    frames = read_frames(case.path, num_frames=8, short_side=64)
    height, width = case.size
    assert frames.dtype == torch.uint8 and frames.shape[0] == 8 and frames.shape[3] == 3
    assert min(frames.shape[1:3]) == 64  # the short side, as displayed
    assert abs(frames.shape[2] / frames.shape[1] - width / height) < 0.1  # aspect kept: nothing squeezed
    assert frames.float().std() > 5  # real pictures
    native = read_frames(case.path, num_frames=8, short_side=None)
    assert native.shape == (8, height, width, 3)


def test_odd_inputs_decode_to_the_right_pictures(bad_corpus):
    def bright(frame: torch.Tensor, axis: int) -> np.ndarray:  # rows (axis 1) or columns (axis 0) that are all white
        return np.where(frame.numpy().min(axis=(axis, 2)) > 200)[0]

    # stored: a vertical white bar moving right; displayed after the 90° rotation: a horizontal bar
    [stored] = _decode(bad_corpus["yuv444p"].path, 1, -1, -1)  # the same content, not rotated
    assert len(bright(stored, 0)) and not len(bright(stored, 1))
    rotated = read_frames(bad_corpus["rotated_90"].path, num_frames=6, short_side=None)
    assert len(bright(rotated[3], 1)) and not len(bright(rotated[3], 0))
    # grayscale: three equal channels
    gray = read_frames(bad_corpus["gray"].path, num_frames=2, short_side=None).int()
    assert (gray[..., 0] - gray[..., 1]).abs().max() <= 2 and (gray[..., 1] - gray[..., 2]).abs().max() <= 2
    # one frame: repeated; three frames for eight samples: each used, in order
    one = read_frames(bad_corpus["one_frame"].path, num_frames=4, short_side=None)
    assert all(torch.equal(one[0], f) for f in one)
    three = read_frames(bad_corpus["three_frames"].path, num_frames=8, short_side=None)
    distinct = [i for i in range(1, 8) if not torch.equal(three[i], three[i - 1])]
    assert len(distinct) == 2
    # the header promises 48 frames; the ones that decode are sampled, none blank
    lying = read_frames(bad_corpus["lying_frame_count"].path, num_frames=8, short_side=None)
    assert all(f.float().mean() > 20 for f in lying) and not torch.equal(lying[0], lying[-1])


def test_pyav_fallback_matches_decord(bad_corpus):
    """The fallback decoder (for files decord cannot read) samples and rotates as decord does."""
    for name in ("yuv444p", "rotated_90", "variable_frame_rate"):
        case = bad_corpus[name]
        rotation = 90 if name == "rotated_90" else 0
        ours = _decode_with_pyav(case.path, 5, rotation, VideoReadError(case.path, "unused"))
        decord = _decode(case.path, 5, -1, -1)
        assert ours.shape == decord.shape
        assert (ours.float() - decord.float()).abs().mean() < 3  # colour conversion differs by a level or two


# ---------------------------------------------------------------------------------------------------------------
# Feature extraction: both the Lightning extractor (`captioner extract`) and the DataModule's own loop


def _check_extraction(bad_corpus, cache: FeatureCache, failures: list[tuple[str, str]]) -> None:
    bad = {name for name, case in bad_corpus.items() if not case.readable}
    assert {vid for vid, _ in failures} == bad
    for vid, reason in failures:
        case = bad_corpus[vid]
        assert reason.startswith(f"{case.path}: ") and case.reason in reason, reason
    cached = {p.stem for p in cache.dir.glob("*.npy")}
    assert cached == set(NAMES) - bad  # every readable clip, however odd, is cached
    for vid in cached:
        feats = cache.load(vid)
        assert feats.shape == (4, 512) and torch.isfinite(feats).all()
    assert not list(cache.dir.glob(".*.tmp*"))


def test_extraction_skips_and_reports_bad_clips(bad_corpus, tmp_path):
    from captioner.features.cache import REPORT_NAME
    from captioner.features.extract import run_extraction

    items = [(name, str(case.path)) for name, case in bad_corpus.items()]
    cache = FeatureCache(tmp_path / "lightning", SPEC)
    failures = run_extraction(SPEC, items, cache, accelerator="cpu", batch_size=8, num_workers=0, progress=False)
    _check_extraction(bad_corpus, cache, failures)
    report = [line.split("\t") for line in (cache.dir / REPORT_NAME).read_text(encoding="utf-8").splitlines()]
    assert sorted(map(tuple, report)) == sorted(failures)  # one line per clip: id <TAB> path: reason

    own = FeatureCache(tmp_path / "datamodule", SPEC)
    failures = extract_features(SPEC.build_encoder(), items, own, batch_size=8, progress=False)
    _check_extraction(bad_corpus, own, failures)


def test_an_unforeseen_decoder_failure_is_one_clips_problem(bad_corpus, monkeypatch):
    import captioner.features.cache as features

    read = features.read_frames

    def exploding(path, *args, **kwargs):
        if "gray" in str(path):
            raise RuntimeError("decoder exploded\nin a second line")
        return read(path, *args, **kwargs)

    monkeypatch.setattr(features, "read_frames", exploding)
    clips = features.ClipFrames([(n, str(bad_corpus[n].path)) for n in ("gray", "yuv444p")], 2, 64)
    vid, frames, error = clips[0]
    assert frames is None and error == f"{bad_corpus['gray'].path}: could not be read (RuntimeError: decoder " \
                                       "exploded in a second line)"
    assert clips[1][2] is None and clips[1][1].shape == (2, 64, 64, 3)


# ---------------------------------------------------------------------------------------------------------------
# `captioner caption`: one process over the whole corpus


def test_caption_cli_over_the_corpus(bad_corpus, trained):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONIOENCODING": "utf-8"}
    paths = [str(case.path) for case in bad_corpus.values()]
    proc = subprocess.run([sys.executable, "-m", "captioner", "caption", *paths, "--checkpoint", str(trained[2]),
                           "--json", "--threads", "1"], capture_output=True, text=True, encoding="utf-8", cwd=REPO,
                          env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    records = json.loads(proc.stdout)
    assert [r["video"] for r in records] == paths  # every input once, in order
    errors = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr
    for name, record in zip(NAMES, records):
        case = bad_corpus[name]
        if case.readable:
            assert set(record) == {"video", "caption", "score", "familiarity", "in_domain"}, record
            assert isinstance(record["caption"], str) and record["score"] <= 0, record
        else:
            reason = CLI_REASON.get(name, case.reason)
            assert set(record) == {"video", "error"} and reason in record["error"], record
            [line] = [e for e in errors if e.startswith(f"captioner caption: {case.path}: ")]
            assert reason in line
    bad = sum(not c.readable for c in bad_corpus.values())
    assert errors[-1] == f"captioner caption: {bad} of {len(NAMES)} videos could not be captioned"


# ---------------------------------------------------------------------------------------------------------------
# Dataset preparation


@pytest.fixture
def msvd_with_bad_clips(bad_corpus, tmp_path) -> Path:
    """An MSVD folder whose clips are files of the corpus: good ones, broken ones, a directory, a missing one."""
    root = tmp_path / "msvd"
    clips = root / "YouTubeClips"
    clips.mkdir(parents=True)
    files = {"good": "mpeg4_avi", "odd": "rotated_90", "empty": "empty", "text": "text_renamed",
             "cut": "truncated", "audio": "audio_only"}
    for clip, name in files.items():
        (clips / f"{clip}_0_1.avi").write_bytes(bad_corpus[name].path.read_bytes())
    (clips / "folder_0_1.avi").mkdir()
    rows = [["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]]
    names = [*files, "folder", "gone"]
    rows += [[clip, "0", "1", "1", "clean", "20", "English", f"a {clip} clip"] for clip in names]
    with open(root / "MSR Video Description Corpus.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    (root / "youtube_mapping.txt").write_text("".join(f"{c}_0_1 vid{i}\n" for i, c in enumerate(names, 1)))
    return root


def test_prepare_reports_missing_and_unreadable_videos(msvd_with_bad_clips, capsys):
    from captioner.cli.prepare import main

    root = msvd_with_bad_clips
    # by default only existence is checked (fast for 10,000 clips): a folder is not a video file
    assert main(["msvd", "--root", str(root), "--out", str(root / "plain")]) == 0
    report = json.loads((root / "plain" / "prepare_report.json").read_text())
    assert [p["clip"] for p in report["missing_videos"]] == ["folder_0_1", "gone_0_1"]
    assert report["clips"]["train"] == 6 and report["unreadable_videos"] == []
    # --check-videos opens each file: the broken ones are reported with the reason and left out
    assert main(["msvd", "--root", str(root), "--out", str(root / "checked"), "--check-videos"]) == 0
    out = capsys.readouterr().out
    assert "4 videos that cannot be read" in out and "2 videos missing on disk" in out
    report = json.loads((root / "checked" / "prepare_report.json").read_text())
    unreadable = {p["clip"]: p["reason"] for p in report["unreadable_videos"]}
    assert set(unreadable) == {"empty_0_1", "text_0_1", "cut_0_1", "audio_0_1"}
    assert "empty file" in unreadable["empty_0_1"] and "no video stream" in unreadable["audio_0_1"]
    assert all(r.startswith(str(root / "YouTubeClips")) for r in unreadable.values())  # names the file
    kept = [v["id"] for v in json.loads((root / "checked" / "annotations.json").read_text())["videos"]]
    assert kept == ["good_0_1", "odd_0_1"]


def test_prepare_with_nothing_left_writes_the_report(msvd_with_bad_clips, tmp_path, capsys):
    from captioner.cli.prepare import main

    empty = tmp_path / "no_videos"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["msvd", "--root", str(msvd_with_bad_clips), "--videos", str(empty), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no clip left to write" in err and str(out / "prepare_report.json") in err
    assert len(json.loads((out / "prepare_report.json").read_text())["missing_videos"]) == 8
    assert not (out / "annotations.json").exists()


def test_prepare_malformed_msrvtt_json(tmp_path, capsys):
    from captioner.cli.prepare import main

    (tmp_path / "train_val_videodatainfo.json").write_text('{"videos": [{"video_id": "video0",}]}')
    assert main(["msrvtt", "--root", str(tmp_path)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "train_val_videodatainfo.json: not valid JSON" in line and "line 1 column" in line


# ---------------------------------------------------------------------------------------------------------------
# Annotation files


def _annotations(tmp_path: Path, videos) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"videos": videos}), encoding="utf-8")
    return path


def _video(vid="a", captions=("a man runs",), **extra) -> dict:
    return {"id": vid, "path": f"videos/{vid}.mp4", "split": "train", "captions": list(captions), **extra}


@pytest.mark.parametrize("content, message", [
    ('{"videos": [', "not valid JSON (Expecting value: line 1 column 13"),
    ("[1, 2]", "expected an object with a 'videos' list"),
    ('{"videos": ["clip.mp4"]}', "video #0 is a str, expected an object"),
    ('{"videos": [{"id": "a", "split": "train"}]}', "video #0 lacks path, captions"),
    ('{"videos": [{"id": "a", "path": "a.mp4", "split": "dev", "captions": ["x"]}]}', "has split 'dev'"),
    ('{"videos": [{"id": "a", "path": "a.mp4", "split": "train", "captions": "a man runs"}]}',
     "expected a list of strings"),
    ('{"videos": [{"id": "a", "path": "a.mp4", "split": "train", "captions": [["nested"]]}]}',
     "expected a list of strings"),
    ('{"videos": [{"id": "", "path": "a.mp4", "split": "train", "captions": ["x"]}]}', "video #0 has id ''"),
    ('{"videos": [{"id": "a\\nb", "path": "a.mp4", "split": "train", "captions": ["x"]}]}', "on one line"),
    ('{"videos": [{"id": "a", "path": null, "split": "train", "captions": ["x"]}]}', "has path None"),
])
def test_malformed_annotations_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "annotations.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_annotations(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_duplicate_ids_and_non_utf8_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"videos #0 and #2 share the id 'a'"):
        load_annotations(_annotations(tmp_path, [_video("a"), _video("b"), _video("a")]))
    path = tmp_path / "latin1.json"
    path.write_bytes('{"videos": [{"id": "café"}]}'.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text"):
        load_annotations(path)


def test_empty_and_punctuation_captions_are_skipped_and_reported(tmp_path, caplog):
    path = _annotations(tmp_path, [
        _video("a", ["a man runs", "", "  ", "?!..."]),
        _video("b", ["...", ""]),  # nothing usable left: the clip is left out
        _video("c", ["a cat sleeps."]),
    ])
    with caplog.at_level(logging.WARNING, logger="captioner"):
        clips = load_annotations(path)
    assert [(c.id, c.captions) for c in clips] == [("a", ["a man runs"]), ("c", ["a cat sleeps."])]
    text = caplog.text
    assert "5 captions with no word are left out (first: 'a' #1: '')" in text
    assert "1 clips with no usable caption are left out: b" in text


def test_extremely_long_captions_are_cut_and_reported(tmp_path, caplog):
    from captioner.data.datamodule import CaptioningDataModule

    long = " ".join(["word"] * 5000)
    vocab = Vocabulary.build(["a man runs", long])
    clips = load_annotations(_annotations(tmp_path, [_video("a", ["a man runs", long])]))
    pairs = CaptionPairs(clips, FeatureCache(tmp_path, SPEC), vocab, max_len=20)
    lengths = [len(ids) for _, ids in pairs.pairs]
    assert lengths == [5, 22] and pairs.pairs[1][1][-1] == vocab.eos_id and pairs.truncated == 1
    assert pairs.pairs[1][1] == vocab.encode(long, 20)
    dm = CaptioningDataModule(data_dir=str(tmp_path), synthetic=False, features_dir=str(tmp_path), max_caption_len=20)
    dm.splits, dm.vocab = {"train": clips}, vocab
    with caplog.at_level(logging.WARNING, logger="captioner"):
        dm.train_dataloader()
    assert "1 of 2 training captions are longer than max_caption_len=20 words" in caplog.text


def test_unknown_words_and_specials_at_inference():
    from captioner.models.decoder import CaptionDecoder

    vocab = Vocabulary.build(["a red ball"])
    assert vocab.decode(vocab.encode("a purple ball")) == "a <unk> ball"  # unknown words map to <unk>
    torch.manual_seed(0)
    decoder = CaptionDecoder(len(vocab), 8, embed_dim=8, hidden_dim=8).eval()
    with torch.no_grad():  # a decoder that would rather say <pad> and <bos> than anything else
        decoder.out.bias[:] = 0
        decoder.out.bias[[vocab.pad_id, vocab.bos_id]] = 50.0
    video = torch.randn(3, 8)
    for ids in (decoder.greedy(video, max_len=6), decoder.beam_search(video, beam_size=3, max_len=6)):
        for row in ids.tolist():
            words = row[: row.index(vocab.eos_id)] if vocab.eos_id in row else row
            assert vocab.pad_id not in words and vocab.bos_id not in words


# ---------------------------------------------------------------------------------------------------------------
# Paths from annotation files never lead outside the output folders


HOSTILE_IDS = ["../../escape", "/abs/olute", "..", ".", ".hidden", ".x.tmp", "a b", "a_b", "vidéo ü", "x/../y",
               "C:\\windows\\x", "a~b", "-"]


def test_cache_paths_stay_inside_and_never_collide(tmp_path):
    cache = FeatureCache(tmp_path / "features", SPEC)
    paths = [cache.path(vid) for vid in HOSTILE_IDS]
    assert len(set(paths)) == len(paths)  # "a b" and "a_b" do not share a file
    for vid, path in zip(HOSTILE_IDS, paths):
        assert path.parent == cache.dir and not path.name.startswith(".")
        cache.save(vid, torch.full((4, 8), float(len(vid))))
    assert _files_under(tmp_path) == set(paths)
    for vid in HOSTILE_IDS:
        assert cache.load(vid)[0, 0] == len(vid)
    assert cache.path("clip00001").name == "clip00001.npy"  # plain ids keep their plain names


def test_extraction_from_hostile_annotations_writes_only_in_the_cache(bad_corpus, tmp_path, capsys):
    from captioner.cli.extract import main

    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    good = bad_corpus["yuv444p"].path
    videos = [{"id": vid, "path": str(good), "split": "train", "captions": ["a clip"]} for vid in HOSTILE_IDS]
    videos.append({"id": "relative", "path": os.path.relpath(good, data), "split": "train", "captions": ["a"]})
    videos.append({"id": "../../../../../../tmp/pwned", "path": "../../outside.mp4", "split": "val",
                   "captions": ["a"]})  # a missing video with a climbing id: reported, nothing written for it
    (data / "annotations.json").write_text(json.dumps({"videos": videos}))
    before = _files_under(tmp_path)
    features = tmp_path / "work" / "features"
    assert main(["--data-dir", str(data), "--features-dir", str(features), "--backbone", "resnet18",
                 "--weights", "null", "--num-frames", "4", "--image-size", "64", "--accelerator", "cpu",
                 "--num-workers", "0", "--no-progress"]) == 0
    assert f"{len(videos) - 1}/{len(videos)} clips cached" in capsys.readouterr().out
    cache_dir = features / "data" / SPEC.key
    new = _files_under(tmp_path) - before
    assert all(p.parent == cache_dir for p in new), sorted(map(str, new))
    assert len(new) == len(videos)  # one feature file per readable clip, and failed.txt
    assert not Path("/tmp/pwned.npy").exists()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: never run code, foreign or tampered files are clear errors


def test_foreign_and_tampered_checkpoints_are_clear_errors(trained, tmp_path):
    import torchvision

    best = trained[2]
    cases = {}
    foreign = tmp_path / "resnet18.pth"  # another program's weights
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), foreign)
    cases[foreign] = "not a captioner checkpoint"
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), tensor)
    cases[tensor] = "not a captioner checkpoint"
    cut = tmp_path / "truncated.ckpt"
    cut.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    cases[cut] = "not a loadable checkpoint"
    ckpt = torch.load(best, weights_only=True)
    more_words = tmp_path / "more_words.ckpt"  # a vocabulary edited after training: it no longer fits the weights
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"],
                                             "vocab": ckpt["hyper_parameters"]["vocab"] + ["extra"]}}, more_words)
    cases[more_words] = "weights do not match the model it describes"
    no_specials = tmp_path / "no_specials.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"],
                                             "vocab": ckpt["hyper_parameters"]["vocab"][4:]}}, no_specials)
    cases[no_specials] = "inconsistent captioner checkpoint (ValueError: a vocabulary must start with"
    bad_spec = tmp_path / "bad_spec.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "feature_spec": {"layers": 3}}}, bad_spec)
    cases[bad_spec] = "inconsistent captioner checkpoint (TypeError"
    for path, reason in cases.items():
        with pytest.raises(CheckpointError) as err:
            VideoCaptioner.from_checkpoint(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message
    VideoCaptioner.from_checkpoint(best)  # and the untouched file still loads


class _WritesAFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_resuming_from_a_checkpoint_never_runs_its_code(tiny_datamodule_args, tmp_path, capsys):
    from conftest import tiny_args

    from captioner.cli.train import train_main

    marker, evil = tmp_path / "code_ran", tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": _WritesAFile(marker)}, evil)
    with pytest.raises(SystemExit) as exit_info:  # refused, in one line, before training starts
        train_main(tiny_args(tiny_datamodule_args, tmp_path / "run", "--trainer.max_epochs=1",
                             f"--ckpt_path={evil}"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"captioner train: error: --ckpt_path {evil}: not a loadable checkpoint (" in err
    assert "safe load refuses" in err and "Traceback" not in err
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes: a process killed between writing and renaming leaves the previous file, whole


class _Killed(BaseException):
    """Stands for SIGKILL arriving between the write and the rename (BaseException: nothing catches it)."""


def test_writers_leave_the_old_file_whole_when_killed_before_the_rename(tmp_path, monkeypatch):
    from captioner.checkpointing import AtomicCheckpointIO
    from captioner.data.prepare import write_json_atomic
    from captioner.features.extract import remove_stale_temp_files

    cache = FeatureCache(tmp_path / "features", SPEC)
    cache.save("clip", torch.ones(4, 8))
    write_json_atomic(tmp_path / "annotations.json", {"videos": ["old"]})
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")

    def killed(*args):
        raise _Killed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(_Killed):
        cache.save("clip", torch.zeros(4, 8))
    with pytest.raises(_Killed):
        write_json_atomic(tmp_path / "annotations.json", {"videos": ["new"]})
    with pytest.raises(_Killed):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert cache.load("clip").eq(1).all()
    assert json.loads((tmp_path / "annotations.json").read_text()) == {"videos": ["old"]}
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 1}
    # the temporary feature file of the killed write is cleared by the next extraction
    assert remove_stale_temp_files(cache) == 1 and [p.name for p in cache.dir.iterdir()] == ["clip.npy"]


def test_checkpoint_writer_clears_the_temporary_file_of_a_killed_write(tmp_path):
    from captioner.checkpointing import AtomicCheckpointIO

    (tmp_path / ".last.ckpt.4242.tmp").write_bytes(b"half a checkpoint")  # what SIGKILL mid-write leaves
    (tmp_path / ".best.ckpt.4242.tmp").write_bytes(b"another file's")
    AtomicCheckpointIO().save_checkpoint({"step": 3}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.ckpt.4242.tmp", "last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 3}


def test_a_save_killed_under_slurm_leaves_the_resume_point_intact(tmp_path, monkeypatch):
    """A job killed while saving `hpc_ckpt_2.ckpt` leaves a temporary file; its name must not look like a
    checkpoint number to Lightning (which reads the digits of any name holding `ckpt_`), or the requeued job
    would resume from a file that does not exist. The next SIGTERM save still counts from the real ones."""
    from captioner.checkpointing import AtomicCheckpointIO, next_hpc_checkpoint

    assert next_hpc_checkpoint(tmp_path / "nothing yet") == str(tmp_path / "nothing yet" / "hpc_ckpt_1.ckpt")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "hpc_ckpt_1.ckpt")
    written = []

    def killed(src, dst):
        written.append(Path(src))
        raise _Killed

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(_Killed):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "hpc_ckpt_2.ckpt")
    monkeypatch.undo()
    [temp] = written
    assert temp.parent == tmp_path and "ckpt_" not in temp.name
    temp.write_bytes(b"half a checkpoint")  # a real SIGKILL leaves it (no `finally` runs)
    assert next_hpc_checkpoint(tmp_path) == str(tmp_path / "hpc_ckpt_2.ckpt")
    AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "hpc_ckpt_2.ckpt")  # the retry clears it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt"]
    (tmp_path / "hpc_ckpt_10.ckpt").write_bytes(b"")
    assert next_hpc_checkpoint(tmp_path) == str(tmp_path / "hpc_ckpt_11.ckpt")


def test_training_writes_checkpoints_atomically(tmp_path):
    from captioner.checkpointing import AtomicCheckpointIO
    from captioner.cli.train import build_cli

    cli = build_cli([f"--trainer.default_root_dir={tmp_path}"])
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
