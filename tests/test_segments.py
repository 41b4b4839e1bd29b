"""Segments of long videos: windows and scenes, one decode, timed captions as SRT and WebVTT, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner.segments import (SegmentReader, parse_segments, plan_segments, scene_bounds, segments_of,
                                window_bounds)
from captioner.subtitles import srt_text, timestamp, write_subtitles
from experiments.scene_cuts import make_film, match

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    """A 22-s film of 11 synthetic 2-s clips (64x64, 12 fps) cut together, the clips alone, and the true cuts."""
    return make_film(tmp_path_factory.mktemp("film"), num_clips=11, side=64)


@pytest.fixture(scope="module")
def model(trained):
    from captioner.api import VideoCaptioner

    return VideoCaptioner.from_checkpoint(trained[2])


def caption_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner", "caption", *args], capture_output=True, text=True,
                          timeout=300)


# --- the pure rules -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -3, "0", "-1.5", "nan", "inf", "ten", "", None])
def test_bad_segment_values_are_one_line_errors(bad):
    with pytest.raises(ValueError, match="segments must be") as err:
        parse_segments(bad)
    assert "\n" not in str(err.value)


def test_windows():
    assert window_bounds(25.0, 10.0) == [0.0, 10.0, 20.0, 25.0]
    assert window_bounds(20.4, 10.0) == [0.0, 10.0, 20.4]  # a last window under 1 s joins the one before
    assert window_bounds(600.0, 10.0)[-2:] == [590.0, 600.0] and len(window_bounds(600.0, 10.0)) == 61
    assert window_bounds(5.0, 60.0) == [0.0, 5.0]  # a window longer than the video: the whole video


def test_scenes_short_ones_join_long_ones_split():
    assert scene_bounds([2.0, 2.3, 4.0], 6.0) == [0.0, 2.0, 4.0, 6.0]  # 2.0-2.3 is under 1 s
    assert scene_bounds([], 70.0, max_seconds=30.0) == pytest.approx([0.0, 70 / 3, 140 / 3, 70.0])
    assert scene_bounds([5.5], 6.0) == [0.0, 6.0]  # the last scene is short
    assert scene_bounds([0.0, 9.0, 12.0], 10.0) == [0.0, 9.0, 10.0]  # cuts outside (0, duration) are not cuts


def test_a_stretch_without_frames_joins_the_segment_before():
    times = torch.tensor([0.0, 0.5, 1.0, 5.0, 5.5]).numpy()  # nothing between 1.5 and 5 s (variable frame rate)
    segments = segments_of([0.0, 2.0, 4.0, 6.0], times)
    assert [(s.start, s.end, s.first, s.stop) for s in segments] == [(0.0, 4.0, 0, 3), (4.0, 6.0, 3, 5)]
    assert segments[0].frame_indices(4) == [0, 1, 1, 2] and segments[1].frame_indices(2) == [3, 4]


# --- subtitles ------------------------------------------------------------------------------------------------------

CUES = [(0.0, 2.0, "a red circle moves left"), (2.0, 4.5, "  two\nlines --> <b>&</b> "), (4.5, 3661.25, "last"),
        (5.0, 6.0, "")]


def test_srt_and_webvtt_read_back_with_real_parsers(tmp_path):
    srt = pytest.importorskip("srt")
    webvtt = pytest.importorskip("webvtt")
    subs = list(srt.parse(srt_text(CUES)))
    assert [s.content for s in subs] == ["a red circle moves left", "two lines -> <b>&</b>", "last"]  # no empty cue
    assert subs[2].end.total_seconds() == 3661.25 and timestamp(3661.25, ",") == "01:01:01,250"
    path = write_subtitles(tmp_path / "film.vtt", CUES)
    cues = webvtt.read(str(path)).captions
    assert [(c.start, c.end) for c in cues] == [("00:00:00.000", "00:00:02.000"), ("00:00:02.000", "00:00:04.500"),
                                               ("00:00:04.500", "01:01:01.250")]
    assert cues[1].raw_text == "two lines -&gt; &lt;b&gt;&amp;&lt;/b&gt;"
    with pytest.raises(ValueError, match="subtitles are .srt or .vtt"):
        write_subtitles(tmp_path / "film.txt", CUES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.vtt"]  # written atomically: no temporary left


# --- one pass over the video ----------------------------------------------------------------------------------------

def test_every_segment_from_one_forward_decode_let_go_as_soon_as_complete(film, monkeypatch):
    import av
    import decord

    opened = []
    real_reader, real_open = decord.VideoReader, av.open
    monkeypatch.setattr(decord, "VideoReader", lambda *a, **k: opened.append("decord") or real_reader(*a, **k))
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append("av") or real_open(*a, **k))
    reader = SegmentReader(film[0], 64)
    segments = plan_segments(reader, 1.0)
    stream, events = reader.stream_frames, []

    def logged(indices):
        for i, frame in stream(indices):
            events.append(("frame", i))
            yield i, frame

    monkeypatch.setattr(reader, "stream_frames", logged)
    clips = []
    for clip in reader.segment_frames(segments, 4):
        events.append(("clip", len(clips)))
        clips.append(clip)
    # the header probe, decord's index of frame times, then the one decode
    assert opened == ["av", "decord", "av"] and len(segments) == 22 and len(clips) == 22
    flat = [i for kind, i in events if kind == "frame"]
    assert flat == sorted(set(flat))  # forward, each frame once
    wanted = [s.frame_indices(4) for s in segments]
    # memory: a segment leaves the moment its last frame is decoded, never held for a batch or the video
    assert [events[events.index(("clip", k)) - 1] for k in range(22)] == [("frame", max(w)) for w in wanted]
    assert clips[0].shape == (4, 64, 64, 3) and clips[0].dtype == torch.uint8
    # the same pixels as decord's decode (and so as `read_clip`): captions do not change with the reader
    for clip, w in zip(clips, wanted):
        assert torch.equal(clip, reader.frames(w))


@pytest.mark.parametrize("short_side", [None, 56])
def test_frames_are_scaled_as_decoded_to_decords_pixels(tmp_path, short_side):
    from badinputs import _gradient, write_video

    path = write_video(tmp_path / "wide.mp4", _gradient(30, 96, 160), options={"g": "10"})  # 3 keyframes
    reader = SegmentReader(path, short_side)
    segments = plan_segments(reader, 1.0)
    clips = list(reader.segment_frames(segments, 5))
    assert len(clips) == 2 and clips[0].shape == ((5, 56, 94, 3) if short_side else (5, 96, 160, 3))  # even sides
    for clip, segment in zip(clips, segments):
        assert torch.equal(clip, reader.frames(segment.frame_indices(5)))  # decord's scaler and colour conversion


def test_read_ahead_is_bounded_in_order_and_raises_where_the_error_was():
    import threading
    import time

    from captioner.segments import read_ahead

    made = []

    def items():
        for i in range(10):
            made.append(i)
            if i == 6:
                raise ValueError("broken packet")
            yield i

    got = read_ahead(items(), 2)
    assert [next(got) for _ in range(3)] == [0, 1, 2]
    deadline = time.monotonic() + 5
    while len(made) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time to run on, were it not bounded
    assert len(made) == 6  # 3 taken, 2 queued, 1 waiting for a slot: never the whole stream
    assert [next(got) for _ in range(3)] == [3, 4, 5]
    with pytest.raises(ValueError, match="broken packet"):
        next(got)
    closed = read_ahead(iter(range(100)), 1)
    assert next(closed) == 0
    closed.close()  # the thread stops with its consumer
    assert not any(t.name == "captioner-read-ahead" for t in threading.enumerate())


def test_fast_seek_reads_keyframes_only(film):
    reader = SegmentReader(film[0], 64)
    keys = set(reader._reader.get_key_indices())
    wanted = []
    frames = reader.frames
    reader.frames = lambda indices: wanted.extend(indices) or frames(indices)
    list(reader.segment_frames(plan_segments(reader, 5.0), 4, seek="keyframe"))
    assert wanted and set(wanted) <= keys


# --- the synthetic film ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("detector", ["pyscenedetect", "cnn"])
def test_scenes_find_the_cuts_and_caption_as_the_clips_alone(film, model, detector):
    if detector == "pyscenedetect":
        pytest.importorskip("scenedetect", reason="pip install 'captioner[scenes]'")
    path, clips, cuts = film
    results = model.caption_segments(path, "scenes", scenes=detector)
    recall, precision = match([r.start for r in results[1:]], cuts)
    assert recall >= 0.9 and precision >= 0.9, [r.start for r in results]
    alone = model.caption(clips, with_scores=True)
    # each segment's caption is its clip's (the tiny model may say the same of every clip: the scores tell them
    # apart, so each segment's score must also be nearest to its own clip's)
    own = [min(alone, key=lambda a: abs(a.score - r.score)) is alone[k]
           for k, r in enumerate(results[: len(alone)])]
    same = [r.caption == a.text for r, a in zip(results, alone)]
    assert sum(same) >= 2 / 3 * len(alone) and sum(own) >= 2 / 3 * len(alone), (same, own)
    assert results[-1].end == pytest.approx(22.0, abs=0.1)


@pytest.mark.slow
def test_cnn_scenes_with_the_onnx_runtime(film, model, trained, tmp_path):
    pytest.importorskip("onnx", reason="the ONNX graphs need onnx: pip install -e '.[dev]'")
    pytest.importorskip("onnxruntime", reason="--runtime onnx needs onnxruntime: pip install -e '.[dev]'")
    from captioner.export import export_checkpoint
    from captioner.onnx_runtime import OnnxCaptioner

    onnx_model = OnnxCaptioner(export_checkpoint(trained[2], tmp_path / "exported", onnx=True))
    path, clips, cuts = film
    results = onnx_model.caption_results([path], segments="scenes", scenes="cnn", strict=True)
    starts = [r.start for r in results]
    recall, precision = match(starts[1:], cuts)  # each frame's video vector (a clip of one) tells the shots apart
    assert recall >= 0.9 and precision >= 0.9, starts
    ours = model.caption_segments(path, "scenes", scenes="cnn")
    assert len(ours) == len(starts)


@pytest.mark.slow
def test_cli_segments_srt_vtt_json_and_bad_values(film, trained, tmp_path):
    srt = pytest.importorskip("srt")
    webvtt = pytest.importorskip("webvtt")
    path, clips, _ = film
    ckpt = str(trained[2])
    for bad in ("0", "-2", "soon"):
        out = caption_cli(str(path), "-c", ckpt, "--segments", bad)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "--segments: expected a positive number of seconds or 'scenes'" in out.stderr
    out = caption_cli(str(path), "-c", ckpt, "--srt", str(tmp_path / "x.srt"))
    assert out.returncode == 2 and "--srt and --vtt need --segments" in out.stderr
    out = caption_cli(str(path), "-c", ckpt, "--segments", "5", "--srt", str(tmp_path / "film.srt"), "--vtt",
                      str(tmp_path / "film.vtt"), "--json")
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    assert [(r["start"], r["end"]) for r in records] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 22)]
    assert set(records[0]) >= {"video", "start", "end", "caption", "score", "familiarity", "in_domain"}
    subs = list(srt.parse((tmp_path / "film.srt").read_text()))
    assert len(subs) == 5 and subs[-1].end.total_seconds() == 22 and all(s.content for s in subs)
    assert len(webvtt.read(str(tmp_path / "film.vtt")).captions) == 5
    # a window longer than the video: the whole video, one cue; several videos: a folder of one file each
    out = caption_cli(str(path), str(clips[0]), "-c", ckpt, "--segments", "600", "--vtt", str(tmp_path / "subs"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split("\t")[1:3] for line in lines] == [["0.000", "22.000"], ["0.000", "2.000"]]
    assert sorted(p.name for p in (tmp_path / "subs").iterdir()) == ["clip00.vtt", "film.vtt"]
    # the report: a timeline, one row per segment with its time and its frames
    out = caption_cli(str(path), "-c", ckpt, "--segments", "scenes", "--html", str(tmp_path / "report.html"))
    assert out.returncode == 0, out.stderr
    html = (tmp_path / "report.html").read_text()
    rows = html.split('<main id="cards" class="timeline">', 1)[1].split("</main>", 1)[0].split("<article")[1:]
    assert len(rows) == len(out.stdout.splitlines()) == 11
    assert all('class="time"' in r and "data:image/jpeg;base64," in r for r in rows)
    assert 'data-start="2.000" data-end="4.000"' in rows[1] and "0:00:02.0 – 0:00:04.0" in rows[1]


@pytest.mark.slow
def test_benchmark_smoke(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import segments as bench

    assert bench.main(["--minutes", "0.2", "--width", "320", "--height", "180"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "expected 2, 0 empty: PASS" in out and "x decoding alone" in out


@pytest.mark.slow
def test_bad_inputs_give_a_line_or_a_sensible_result(model, bad_corpus, film):
    # a video without cuts: one scene
    alone = model.caption_segments(film[1][0], "scenes", scenes="cnn")
    assert [(r.start, r.end) for r in alone] == [(0.0, pytest.approx(2.0))]
    for name in ("variable_frame_rate", "lying_frame_count"):  # a header whose frame count and duration lie
        path = bad_corpus[name].path
        results = model.caption_segments(path, 0.25)
        ends = [r.start for r in results] + [results[-1].end]
        assert all(r.ok and r.caption for r in results) and ends == sorted(ends) and ends[0] == 0, name
        assert ends[-1] <= SegmentReader(path).duration + 1e-6
    failed = list(model.caption_results([bad_corpus["text_renamed"].path, film[1][1]], segments=1.0))
    assert not failed[0].ok and "\n" not in failed[0].error and all(r.ok for r in failed[1:])


# --- the WebVTT track plays in a browser ----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_browser_reads_the_vtt_track_of_an_html5_video(film, tmp_path):
    browser = next((b for b in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if b), None)
    if browser is None:
        pytest.skip("no headless browser: install Debian's `chromium` (apt-get install chromium)")
    shutil.copy(film[0], tmp_path / "film.mp4")
    write_subtitles(tmp_path / "film.vtt", [(0.0, 2.0, "a red circle"), (2.0, 4.5, "a blue square & a cross")])
    page = tmp_path / "page.html"
    page.write_text("""<!doctype html><video src="film.mp4" muted><track id="t" kind="captions" src="film.vtt"
default></video><pre id="out">pending</pre><script>
var track = document.getElementById("t");
track.track.mode = "hidden";
track.addEventListener("load", function () {
  var cues = Array.prototype.map.call(track.track.cues, function (c) { return c.startTime + "|" + c.endTime + "|" + c.getCueAsHTML().textContent; });
  document.getElementById("out").textContent = JSON.stringify(cues);
});
track.addEventListener("error", function () { document.getElementById("out").textContent = "error"; });
</script>""")
    proc = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--allow-file-access-from-files", "--virtual-time-budget=5000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout.split('<pre id="out">', 1)[-1].split("</pre>", 1)[0]
    assert json.loads(out.replace("&amp;", "&")) == ["0|2|a red circle", "2|4.5|a blue square & a cross"], out
