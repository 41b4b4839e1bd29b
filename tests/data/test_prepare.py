"""MSVD and MSR-VTT conversion: tiny fixtures in both official formats, standard splits, normalised captions, reports."""

import csv
import json
from pathlib import Path

import pytest
from badinputs import write_msvd_with_bad_clips

from captioner.cli.prepare import main
from captioner.data.datasets import load_annotations
from captioner.data.prepare import is_safe_id, normalize_caption, prepare_msvd
from captioner.vocab import tokenize

MSVD_HEADER = ["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]


def _row(video, start, end, text, language="English"):
    return [video, str(start), str(end), "1", "clean", "20", language, text]


@pytest.fixture
def msvd_root(tmp_path) -> Path:
    """An MSVD folder in the official layout: 5 mapped clips (one per split boundary), bad rows, a missing video."""
    root = tmp_path / "msvd"
    (root / "YouTubeClips").mkdir(parents=True)
    rows = [
        MSVD_HEADER,
        _row("abc", 1, 5, "A man is playing a guitar."),
        _row("abc", 1, 5, 'Someone plays "the guitar", loudly!'),
        _row("abc", 1, 5, "Un homme joue de la guitare.", language="French"),
        _row("xyz-_Q", 10, 20, "A cat\nis sleeping."),  # a quoted newline inside a description
        _row("Q1w2E3r4T5y", 0, 7, "Two dogs are running."),
        _row("Q1w2E3r4T5y", 0, 7, "..."),  # no word: malformed
        _row("unmapped", 3, 4, "A clip that youtube_mapping.txt does not list."),
        _row("../../etc", 1, 2, "a path escape"),  # unsafe id: malformed
        _row("abc", "x", 5, "bad start time"),  # malformed
        ["abc", "1", "5", "too", "few"],  # malformed
        _row("last", 0, 1, "The last clip of the test split."),
    ]
    with open(root / "MSR Video Description Corpus.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    (root / "youtube_mapping.txt").write_text(
        "abc_1_5 vid1\n"
        "xyz-_Q_10_20 vid1201\n"
        "Q1w2E3r4T5y_0_7 vid1301\n"
        "nocaption_0_1 vid2\n"
        "this line is broken\n"
        "last_0_1 vid1970\n"
        "beyond_0_1 vid1971\n"
    )
    for clip in ("abc_1_5", "xyz-_Q_10_20", "Q1w2E3r4T5y_0_7"):  # last_0_1.avi is missing
        (root / "YouTubeClips" / f"{clip}.avi").write_bytes(b"not decoded by these tests")
    return root


def test_msvd_conversion_splits_and_captions(msvd_root):
    report = prepare_msvd(msvd_root / "MSR Video Description Corpus.csv", msvd_root / "youtube_mapping.txt",
                          [msvd_root / "YouTubeClips"], msvd_root)
    data = json.loads((msvd_root / "annotations.json").read_text())
    assert data["name"] == "msvd"
    videos = {v["id"]: v for v in data["videos"]}
    assert list(videos) == ["abc_1_5", "xyz-_Q_10_20", "Q1w2E3r4T5y_0_7"]  # in vidN order; the missing clip is out
    assert [v["split"] for v in videos.values()] == ["train", "val", "test"]
    assert videos["abc_1_5"]["captions"] == ["a man is playing a guitar", "someone plays the guitar loudly"]
    assert videos["xyz-_Q_10_20"]["captions"] == ["a cat is sleeping"]
    assert videos["Q1w2E3r4T5y_0_7"]["captions"] == ["two dogs are running"]
    assert videos["abc_1_5"]["path"] == "YouTubeClips/abc_1_5.avi" and videos["abc_1_5"]["vid"] == "vid1"
    assert report.clips == {"train": 1, "val": 1, "test": 1}
    assert report.captions == {"train": 2, "val": 1, "test": 1}
    assert report.ignored_rows == {"Language is not English": 1}
    # the project reads it back, with paths that lead to the files
    clips = load_annotations(msvd_root / "annotations.json")
    assert all(Path(c.path).is_file() for c in clips)


def test_msvd_reports_every_problem(msvd_root, capsys):
    assert main(["msvd", "--root", str(msvd_root)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "videos missing on disk" in out
    report = json.loads((msvd_root / "prepare_report.json").read_text())
    malformed = [(p["source"], p["reason"]) for p in report["malformed"]]
    reasons = " | ".join(r for _, r in malformed)
    assert "empty description" in reasons and "invalid VideoID '../../etc'" in reasons
    assert "Start/End not integers" in reasons and "5 fields, expected 8" in reasons
    assert "expected '<clip> vid<N>'" in reasons  # the broken mapping line
    assert len(malformed) == 5
    # the multi-line row is located by its line range, the rows after it by their own line
    wheres = [p["where"] for p in report["malformed"] if p["source"].endswith(".csv")]
    assert wheres == ["line 8", "line 10", "line 11", "line 12"]
    skipped = {p["clip"]: p["reason"] for p in report["skipped_clips"]}
    assert "no English caption" in skipped["nocaption_0_1"]
    assert "outside the standard split" in skipped["beyond_0_1"]
    assert "no split" in skipped["unmapped_3_4"]
    assert [p["clip"] for p in report["missing_videos"]] == ["last_0_1"]


def test_msvd_keep_missing_keeps_the_clip(msvd_root, tmp_path):
    out = tmp_path / "out"
    report = prepare_msvd(msvd_root / "MSR Video Description Corpus.csv", msvd_root / "youtube_mapping.txt",
                          [msvd_root / "YouTubeClips"], out, keep_missing=True)
    videos = json.loads((out / "annotations.json").read_text())["videos"]
    assert [v["id"] for v in videos][-1] == "last_0_1" and report.clips["test"] == 2
    # videos outside the output folder are stored by absolute path
    assert Path(videos[0]["path"]).is_absolute() and Path(videos[0]["path"]).is_file()


def test_msvd_wrong_file_is_an_error(tmp_path, capsys):
    (tmp_path / "MSR Video Description Corpus.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "youtube_mapping.txt").write_text("")
    assert main(["msvd", "--root", str(tmp_path)]) == 1
    assert "not the MSVD corpus CSV" in capsys.readouterr().err
    assert not (tmp_path / "annotations.json").exists()


@pytest.fixture
def msrvtt_root(tmp_path) -> Path:
    """An MSR-VTT folder in the official layout: both JSON files, TrainValVideo/ and TestVideo/."""
    root = tmp_path / "msrvtt"
    train_val = {
        "info": {"year": 2016},
        "videos": [
            {"video_id": "video0", "split": "train", "category": 9, "id": 0},
            {"video_id": "video1", "split": "validate", "category": 3, "id": 1},
            {"video_id": "video2", "split": "train", "category": 1, "id": 2},  # no caption
            {"video_id": "video0", "split": "train", "id": 3},  # listed twice
            {"video_id": "video3", "split": "dev", "id": 4},  # unknown split
            {"video_id": "../video4", "split": "train", "id": 5},  # unsafe
            {"split": "train", "id": 6},  # no id
            {"video_id": "video10", "split": "train", "id": 10},  # video file missing
        ],
        "sentences": [
            {"video_id": "video0", "caption": "A man is cooking in a kitchen", "sen_id": 0},
            {"video_id": "video0", "caption": "someone is cooking.", "sen_id": 1},
            {"video_id": "video1", "caption": "a woman sings a song", "sen_id": 2},
            {"video_id": "video1", "sen_id": 3},  # no caption
            {"video_id": "video9", "caption": "a caption of an unlisted video", "sen_id": 4},
            {"video_id": "video1", "caption": " ?! ", "sen_id": 5},  # no word
            {"video_id": "video10", "caption": "a car drives", "sen_id": 6},
        ],
    }
    test = {
        "videos": [{"video_id": "video7010", "split": "test", "category": 2, "id": 7010}],
        "sentences": [{"video_id": "video7010", "caption": "Kids are playing football.", "sen_id": 7}],
    }
    root.mkdir()
    (root / "train_val_videodatainfo.json").write_text(json.dumps(train_val))
    (root / "test_videodatainfo.json").write_text(json.dumps(test))
    for folder, names in (("TrainValVideo", ["video0", "video1", "video2"]), ("TestVideo", ["video7010"])):
        (root / folder).mkdir()
        for name in names:
            (root / folder / f"{name}.mp4").write_bytes(b"not decoded by these tests")
    return root


def test_msrvtt_conversion_and_reports(msrvtt_root, capsys):
    assert main(["msrvtt", "--root", str(msrvtt_root)]) == 0
    videos = {v["id"]: v for v in json.loads((msrvtt_root / "annotations.json").read_text())["videos"]}
    assert list(videos) == ["video0", "video1", "video7010"]
    assert {k: v["split"] for k, v in videos.items()} == {"video0": "train", "video1": "val", "video7010": "test"}
    assert videos["video0"]["captions"] == ["a man is cooking in a kitchen", "someone is cooking"]
    assert videos["video1"]["captions"] == ["a woman sings a song"]
    assert videos["video7010"]["path"] == "TestVideo/video7010.mp4" and videos["video7010"]["category"] == 2
    report = json.loads((msrvtt_root / "prepare_report.json").read_text())
    reasons = {(p["where"], p["reason"]) for p in report["malformed"]}
    assert ("videos[3]", "video0 listed twice") in reasons
    assert ("videos[4]", "unknown split 'dev'") in reasons
    assert ("videos[5]", "missing or invalid video_id '../video4'") in reasons
    assert ("videos[6]", "missing or invalid video_id None") in reasons
    assert ("sentences[3]", "needs a string video_id and caption") in reasons
    assert ("sentences[4]", "caption of unknown video 'video9'") in reasons
    assert ("sentences[5]", "empty caption ' ?! '") in reasons
    assert len(report["malformed"]) == 7
    assert [p["clip"] for p in report["skipped_clips"]] == ["video2"]
    assert [p["clip"] for p in report["missing_videos"]] == ["video10"]
    assert report["clips"] == {"train": 1, "val": 1, "test": 1}
    assert "1 videos missing on disk" in capsys.readouterr().out


def test_msrvtt_nothing_left_is_an_error(msrvtt_root, tmp_path, capsys):
    empty = tmp_path / "no_videos"
    empty.mkdir()
    assert main(["msrvtt", "--root", str(msrvtt_root), "--videos", str(empty), "--out", str(tmp_path / "o")]) == 1
    assert "no clip left to write" in capsys.readouterr().err


@pytest.mark.parametrize("caption", [
    "A man is playing a guitar.", "Someone's cooking -- fast!", "a \"quoted\" word, and don't stop",
    "The cat (a tabby) sleeps...", "  spaces   everywhere  ", "t-shirts & jeans; 3 people", "I can't, won't.",
])
def test_normalised_captions_read_back_the_same(caption):
    # the vocabulary tokenises the stored caption again: that must give the same words
    assert tokenize(normalize_caption(caption)) == tokenize(caption)
    assert normalize_caption(normalize_caption(caption)) == normalize_caption(caption)


@pytest.mark.parametrize("clip_id, safe", [
    ("video0", True), ("-4wsuPCjDBc_5_15", True), ("a.b", True), ("..", False), ("../x", False), ("a/b", False),
    (".hidden", False), ("a..b", False), ("", False), ("x\\y", False),
])
def test_ids_cannot_escape_a_folder(clip_id, safe):
    assert is_safe_id(clip_id) is safe


def test_wrong_file_message_quotes_a_short_prefix(tmp_path, capsys):
    # the MSR-VTT JSON passed as the MSVD corpus: one 30,000-character line, which the message must not echo
    videos = [{"video_id": f"video{i}", "split": "train", "category": 1, "id": i} for i in range(600)]
    one_line = tmp_path / "train_val_videodatainfo.json"
    one_line.write_text(json.dumps({"info": {"year": 2016}, "videos": videos, "sentences": []}))
    assert len(one_line.read_text()) > 30_000
    (tmp_path / "youtube_mapping.txt").write_text("abc_1_5 vid1\n")
    assert main(["msvd", "--root", str(tmp_path), "--corpus", str(one_line)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400, err
    assert "not the MSVD corpus CSV" in err and '{"info": {"year": 2016}, "videos"' in err and "…" in err


def test_long_mapping_line_is_quoted_short(msvd_root):
    with open(msvd_root / "youtube_mapping.txt", "a") as f:
        f.write("x" * 5000 + " y z\n")
    prepare_msvd(msvd_root / "MSR Video Description Corpus.csv", msvd_root / "youtube_mapping.txt",
                 [msvd_root / "YouTubeClips"], msvd_root)
    reasons = [p["reason"] for p in json.loads((msvd_root / "prepare_report.json").read_text())["malformed"]]
    assert max(map(len, reasons)) < 200


def test_msvd_language_is_matched_whatever_its_case(msvd_root):
    with open(msvd_root / "MSR Video Description Corpus.csv", "a", newline="") as f:
        csv.writer(f).writerow(_row("abc", 1, 5, "A man strums.", language="english"))
    report = prepare_msvd(msvd_root / "MSR Video Description Corpus.csv", msvd_root / "youtube_mapping.txt",
                          [msvd_root / "YouTubeClips"], msvd_root)
    videos = {v["id"]: v for v in json.loads((msvd_root / "annotations.json").read_text())["videos"]}
    assert "a man strums" in videos["abc_1_5"]["captions"]
    assert report.ignored_rows == {"Language is not English": 1}  # the French row only


def test_nan_description_is_no_caption(msvd_root, msrvtt_root):
    with open(msvd_root / "MSR Video Description Corpus.csv", "a", newline="") as f:
        csv.writer(f).writerows([_row("abc", 1, 5, "NaN"), _row("abc", 1, 5, " nan ")])
    report = prepare_msvd(msvd_root / "MSR Video Description Corpus.csv", msvd_root / "youtube_mapping.txt",
                          [msvd_root / "YouTubeClips"], msvd_root)
    videos = {v["id"]: v for v in json.loads((msvd_root / "annotations.json").read_text())["videos"]}
    assert "nan" not in videos["abc_1_5"]["captions"] and len(videos["abc_1_5"]["captions"]) == 2
    reasons = [p.reason for p in report.malformed]
    assert "empty description 'NaN'" in reasons and "empty description 'nan'" in reasons  # reported, like empty ones
    # MSR-VTT's JSON the same way
    data = json.loads((msrvtt_root / "train_val_videodatainfo.json").read_text())
    data["sentences"].append({"video_id": "video0", "caption": "NaN", "sen_id": 9})
    (msrvtt_root / "train_val_videodatainfo.json").write_text(json.dumps(data))
    assert main(["msrvtt", "--root", str(msrvtt_root)]) == 0
    videos = {v["id"]: v for v in json.loads((msrvtt_root / "annotations.json").read_text())["videos"]}
    assert "nan" not in videos["video0"]["captions"]
    report = json.loads((msrvtt_root / "prepare_report.json").read_text())
    assert any(p["reason"] == "empty caption 'NaN'" for p in report["malformed"])


def test_msrvtt_missing_test_clip_is_expected_in_test_video(msrvtt_root):
    (msrvtt_root / "TestVideo" / "video7010.mp4").unlink()
    assert main(["msrvtt", "--root", str(msrvtt_root), "--keep-missing"]) == 0
    missing = {p["clip"]: p["reason"] for p in
               json.loads((msrvtt_root / "prepare_report.json").read_text())["missing_videos"]}
    assert str(Path("TestVideo") / "video7010.mp4") in missing["video7010"]
    assert str(Path("TrainValVideo") / "video10.mp4") in missing["video10"]
    videos = {v["id"]: v for v in json.loads((msrvtt_root / "annotations.json").read_text())["videos"]}
    assert videos["video7010"]["path"] == "TestVideo/video7010.mp4"


def test_msvd_mapping_with_no_valid_line_says_so(msvd_root, capsys):
    (msvd_root / "youtube_mapping.txt").write_text("abc_1_5\tvid1\tYouTube\n" * 3)  # a mirror's three-column list
    assert main(["msvd", "--root", str(msvd_root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "youtube_mapping.txt: none of its 3 lines was understood" in err
    assert "expected '<clip> vid<N>'" in err and "line 1 is 'abc_1_5\\tvid1\\tYouTube'" in err
    assert "no clip left" not in err
    (msvd_root / "youtube_mapping.txt").write_text("\n")
    assert main(["msvd", "--root", str(msvd_root)]) == 1
    assert "youtube_mapping.txt: empty" in capsys.readouterr().err


# Bad clips (tests/badinputs.py): reported, left out, and the report written


@pytest.fixture
def msvd_with_bad_clips(bad_corpus, tmp_path) -> Path:
    """An MSVD folder whose clips are files of the corpus: good ones, broken ones, a directory, a missing one."""
    return write_msvd_with_bad_clips(bad_corpus, tmp_path)


def test_prepare_reports_missing_and_unreadable_videos(msvd_with_bad_clips, capsys):
    from captioner.cli.prepare import main

    root = msvd_with_bad_clips
    # by default only existence is checked (fast for 10,000 clips): a folder is not a video file
    assert main(["msvd", "--root", str(root), "--out", str(root / "plain")]) == 0
    report = json.loads((root / "plain" / "prepare_report.json").read_text())
    assert [p["clip"] for p in report["missing_videos"]] == ["folder_0_1", "gone_0_1"]
    assert report["clips"]["train"] == 8 and report["unreadable_videos"] == []
    # --check-videos opens each file: the broken ones are reported with the reason and left out
    assert main(["msvd", "--root", str(root), "--out", str(root / "checked"), "--check-videos"]) == 0
    out = capsys.readouterr().out
    assert "6 videos that cannot be read" in out and "2 videos missing on disk" in out
    report = json.loads((root / "checked" / "prepare_report.json").read_text())
    unreadable = {p["clip"]: p["reason"] for p in report["unreadable_videos"]}
    assert set(unreadable) == {"empty_0_1", "text_0_1", "cut_0_1", "audio_0_1", "photo_0_1", "short_0_1"}
    assert "empty file" in unreadable["empty_0_1"] and "no video stream" in unreadable["audio_0_1"]
    # a photo renamed .avi, and an AVI cut off after 31 of its 111 frames: one line each, naming both counts
    assert unreadable["photo_0_1"].endswith("photo_0_1.avi: a still image (JPEG), not a video")
    short = (f"{root / 'YouTubeClips' / 'short_0_1.avi'}: truncated: only 31 of the 111 frames its header lists "
             "are in the file")
    assert unreadable["short_0_1"] == short and f"    videos:short_0_1: {short}" in out.splitlines()
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
    assert len(json.loads((out / "prepare_report.json").read_text())["missing_videos"]) == 10
    assert not (out / "annotations.json").exists()


def test_prepare_says_where_it_looked_for_videos_and_finds_a_nested_folder(msvd_root, capsys):
    """An archive unpacked into a folder of its own name: `YouTubeClips/YouTubeClips/*.avi`."""
    clips = msvd_root / "YouTubeClips"
    nested = clips / "YouTubeClips"
    nested.mkdir()
    for video in clips.glob("*.avi"):
        video.rename(nested / video.name)
    assert main(["msvd", "--root", str(msvd_root)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "no clip left to write (4 annotated, 4 without a video file, 0 unreadable; " in line
    assert f"looked in {clips} (no video file); 3 video files one folder down: pass --videos {nested};" in line
    # some clips found: the summary says where the missing ones were looked for, and where the others are
    (clips / "abc_1_5.avi").write_bytes(b"found")
    assert main(["msvd", "--root", str(msvd_root), "--out", str(msvd_root / "out")]) == 0
    out = capsys.readouterr().out
    assert f"  3 videos missing on disk (looked in {clips} (1 video file)):" in out.splitlines()
    assert f"    3 video files one folder down: pass --videos {nested}" in out.splitlines()
    # a folder that does not exist says so
    assert main(["msvd", "--root", str(msvd_root), "--videos", str(msvd_root / "nope")]) == 1
    assert f"looked in {msvd_root / 'nope'} (no such folder);" in capsys.readouterr().err


def test_prepare_malformed_msrvtt_json(tmp_path, capsys):
    from captioner.cli.prepare import main

    (tmp_path / "train_val_videodatainfo.json").write_text('{"videos": [{"video_id": "video0",}]}')
    assert main(["msrvtt", "--root", str(tmp_path)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "train_val_videodatainfo.json: not valid JSON" in line and "line 1 column" in line
