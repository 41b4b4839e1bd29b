"""The embedded dataset: deterministic synthetic H.264 clips of moving shapes, with MSVD-style paraphrased captions."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.io import atomic_path, write_text_atomic

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 0.10, "big": 0.20}  # radius as a fraction of the frame side
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "still")
# Captions whose truth depends on the order of frames: a model that ignores order can't tell these pairs apart.
DIRECTIONAL = ("left", "right", "up", "down", "grow", "shrink")

# Paraphrases of each motion, (singular, plural): every clip gets at least 5 references, like MSVD.
MOTION_PHRASES = {
    "left": (["is moving to the left", "moves to the left", "moves left", "is going left", "slides to the left"],
             ["are moving to the left", "move to the left", "move left", "are going left", "slide to the left"]),
    "right": (["is moving to the right", "moves to the right", "moves right", "is going right", "slides to the right"],
              ["are moving to the right", "move to the right", "move right", "are going right", "slide to the right"]),
    "up": (["is moving up", "moves up", "moves upward", "is going up", "rises"],
           ["are moving up", "move up", "move upward", "are going up", "rise"]),
    "down": (["is moving down", "moves down", "moves downward", "is going down", "falls"],
             ["are moving down", "move down", "move downward", "are going down", "fall"]),
    "grow": (["is growing", "grows", "is getting bigger", "gets bigger", "becomes larger"],
             ["are growing", "grow", "are getting bigger", "get bigger", "become larger"]),
    "shrink": (["is shrinking", "shrinks", "is getting smaller", "gets smaller", "becomes smaller"],
               ["are shrinking", "shrink", "are getting smaller", "get smaller", "become smaller"]),
    "still": (["is standing still", "is not moving", "stays still", "does not move", "is still"],
              ["are standing still", "are not moving", "stay still", "do not move", "are still"]),
}


# Words that name each motion in a caption (any paraphrase above, or close variants).
MOTION_WORDS = {
    "left": {"left"}, "right": {"right"},
    "up": {"up", "upward", "rises", "rise", "rising"}, "down": {"down", "downward", "falls", "fall", "falling"},
    "grow": {"growing", "grows", "grow", "bigger", "larger"},
    "shrink": {"shrinking", "shrinks", "shrink", "smaller"},
    "still": {"still", "not"},
}


def motion_of_caption(caption: str) -> str | None:
    """The motion a caption states (`left`, ..., `still`), or None when it names none or several."""
    from captioner.vocab import tokenize

    words = set(tokenize(caption))
    found = [m for m, ws in MOTION_WORDS.items() if words & ws]
    return found[0] if len(found) == 1 else None


def direction_report(hypotheses: list[str], references: list[list[str]], motions: list[str]) -> dict[str, float]:
    """On the clips whose truth depends on frame order: BLEU-1..4 and the accuracy of the motion word."""
    from captioner.metrics import bleu_scores

    keep = [i for i, m in enumerate(motions) if m in DIRECTIONAL]
    if not keep:
        return {}
    hyps, refs = [hypotheses[i] for i in keep], [references[i] for i in keep]
    report = {f"dir_{k}": v for k, v in bleu_scores(hyps, refs).items()}
    report["direction_acc"] = sum(motion_of_caption(hypotheses[i]) == motions[i] for i in keep) / len(keep)
    return report


def motion_scores(hypotheses: list[str], references: list[list[str]], extras: list[dict]) -> dict[str, float]:
    """`direction_report` when every clip's annotation (`extras`, one dict per clip) names its motion, as the
    synthetic set's do; empty for any other dataset."""
    if not extras or not all("motion" in extra for extra in extras):
        return {}
    return direction_report(hypotheses, references, [extra["motion"] for extra in extras])


@dataclass
class SceneObject:
    color: str
    shape: str
    size: str


def _subject(objs: list[SceneObject], variant: int, with_size: bool) -> str:
    def one(o: SceneObject, article: str) -> str:
        size = f"{o.size} " if with_size and variant % 2 == 0 else ""
        return f"{article} {size}{o.color} {o.shape}"

    article = "the" if variant == 3 else "a"
    return " and ".join(one(o, article) for o in objs)


def make_captions(objs: list[SceneObject], motion: str, rng: random.Random, n: int = 5) -> list[str]:
    """`n` paraphrased captions of one clip."""
    singular, plural = MOTION_PHRASES[motion]
    phrases = plural if len(objs) > 1 else singular
    order = list(range(len(phrases)))
    rng.shuffle(order)
    with_size = motion not in ("grow", "shrink")  # a growing object has no single size
    return [f"{_subject(objs, v, with_size)} {phrases[order[v % len(phrases)]]}" for v in range(n)]


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    kind = rng.integers(4)
    base = rng.integers(20, 110, size=3)
    if kind == 0:  # flat dark colour
        img = np.broadcast_to(base, (side, side, 3)).astype(np.float32)
    elif kind == 1:  # gradient
        other = rng.integers(20, 110, size=3)
        t = np.linspace(0, 1, side, dtype=np.float32)[:, None, None]
        img = (base * (1 - t) + other * t).repeat(side, 1)
    elif kind == 2:  # smooth noise texture
        small = rng.normal(0, 18, size=(side // 16, side // 16, 3))
        img = base + np.kron(small, np.ones((16, 16, 1)))
    else:  # stripes
        period = int(rng.integers(10, 24))
        stripes = ((np.arange(side) // period) % 2).astype(np.float32)[None, :, None]
        img = base + 25 * stripes * np.ones((side, 1, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(frame: np.ndarray, shape: str, cx: float, cy: float, r: float, color: tuple) -> None:
    side = frame.shape[0]
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif shape == "square":
        mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    elif shape == "triangle":  # pointing up
        mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    else:  # cross
        arm = r * 0.33
        mask = ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= r) & (np.abs(dx) <= arm))
    frame[mask] = color


def render_clip(objs: list[SceneObject], motion: str, rng: np.random.Generator, side: int = 160,
                num_frames: int = 24) -> np.ndarray:
    """Frames `(T, side, side, 3)` uint8 of the objects doing `motion` over a random background."""
    bg = _background(rng, side)
    lo, hi = 0.28 * side, 0.72 * side  # stay inside the centre crop the CNN sees
    n = len(objs)
    tracks = []
    for i, o in enumerate(objs):
        r0 = SIZES[o.size] * side * (0.8 if n > 1 else 1.0)
        # two objects sit side by side (or one above the other for horizontal motion)
        lane = (i - (n - 1) / 2) * 0.3 * side
        travel = float(rng.uniform(0.25, 0.4)) * side
        start = float(rng.uniform(lo, hi - travel))
        cx = cy = side / 2
        if motion in ("left", "right"):
            xs = np.linspace(start, start + travel, num_frames)
            xs = xs[::-1] if motion == "left" else xs
            ys = np.full(num_frames, cy + lane)
        elif motion in ("up", "down"):
            ys = np.linspace(start, start + travel, num_frames)
            ys = ys[::-1] if motion == "up" else ys
            xs = np.full(num_frames, cx + lane)
        else:
            xs = np.full(num_frames, cx + lane + rng.uniform(-0.05, 0.05) * side)
            ys = np.full(num_frames, cy + rng.uniform(-0.05, 0.05) * side)
        if motion in ("grow", "shrink"):
            rs = np.linspace(0.4 * r0, 1.3 * r0, num_frames)
            rs = rs[::-1] if motion == "shrink" else rs
        else:
            rs = np.full(num_frames, r0)
        tracks.append((o, xs, ys, rs))
    frames = np.empty((num_frames, side, side, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t] = bg
        for o, xs, ys, rs in tracks:
            _draw(frames[t], o.shape, xs[t], ys[t], rs[t], COLORS[o.color])
    return frames


X264_REPRODUCIBLE = "rc-lookahead=0:mbtree=0:scenecut=0:b-adapt=0"  # see write_mp4


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = 12) -> None:
    """Write uint8 RGB frames `(T, H, W, 3)` as an H.264 mp4 (atomically: temp file, then rename).

    The same frames always give the same file: x264 runs on one thread, every frame has its timestamp, and its
    lookahead (frame-type decisions and macroblock-tree rate control on downscaled frames) is off. Measured by
    generating 100 clips in separate processes: with x264's defaults about one clip in five differed from run
    to run (decoded pixels off by up to 3 levels, so the features and every training run after them differed
    too); with one thread and timestamps, about one in twenty; with the lookahead off as well, none in three
    repeats. The files are about a third larger.
    """
    import av

    path = Path(path)
    # the temporary name keeps the extension, from which the container format is chosen
    with atomic_path(path, f".{path.stem}.tmp{path.suffix}") as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast", "x264-params": X264_REPRODUCIBLE}
        stream.codec_context.thread_count = 1  # reproducible output (the clips are small: little speed to lose)
        for t, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate_synthetic_dataset(
    root: str | os.PathLike,
    num_train: int = 600,
    num_val: int = 60,
    num_test: int = 100,
    seed: int = 0,
    side: int = 160,
    num_frames: int = 24,
    two_object_fraction: float = 0.2,
    progress: bool = True,
) -> Path:
    """Write clips to `root/videos/` and `root/annotations.json` (the project's annotation format).

    Deterministic from `seed`. Returns the path of the annotation file.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    splits = ["train"] * num_train + ["val"] * num_val + ["test"] * num_test
    entries = []
    for i, split in enumerate(tqdm(splits, desc="Generating synthetic clips", disable=not progress, unit="clip")):
        n_objs = 2 if rng.random() < two_object_fraction else 1
        colors = rng.sample(sorted(COLORS), n_objs)
        shapes = rng.sample(SHAPES, n_objs)
        size = rng.choice(sorted(SIZES)) if n_objs == 1 else "small"
        objs = [SceneObject(c, s, size) for c, s in zip(colors, shapes)]
        motion = rng.choice(MOTIONS)
        vid = f"clip{i:05d}"
        rel = f"videos/{vid}.mp4"
        frames = render_clip(objs, motion, np.random.default_rng([seed, i]), side=side, num_frames=num_frames)
        write_mp4(frames, root / rel)
        entries.append({
            "id": vid, "path": rel, "split": split, "captions": make_captions(objs, motion, rng),
            "motion": motion, "directional": motion in DIRECTIONAL,
        })
    params = dict(num_train=num_train, num_val=num_val, num_test=num_test, seed=seed, side=side, num_frames=num_frames,
                  two_object_fraction=two_object_fraction)
    ann = {"name": "synthetic", "generator": params, "videos": entries}
    path = root / "annotations.json"
    write_text_atomic(path, json.dumps(ann, indent=1))
    return path
