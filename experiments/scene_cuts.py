"""Scene cuts: the frame CNN's features against PySceneDetect on a film of synthetic clips cut together.

    python -m experiments.scene_cuts --checkpoint runs/synthetic [--clips 31]

Prints a markdown table (recall and precision of cuts within 0.25 s, seconds) that docs/segments.md keeps.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

TOLERANCE = 0.25  # seconds: a found cut this close to a true one counts


def make_film(folder: Path, num_clips: int = 11, seconds: float = 2.0, fps: int = 12, side: int = 64,
              seed: int = 0) -> tuple[Path, list[Path], list[float]]:
    """Synthetic clips of `seconds` each, written alone and cut together into `folder/film.mp4`.

    Returns (the film, the clips alone, the true cut times in seconds).
    """
    from captioner.data.synthetic import COLORS, MOTIONS, SHAPES, SIZES, SceneObject, render_clip, write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_clip = int(round(seconds * fps))
    clips, frames = [], []
    for i in range(num_clips):
        obj = SceneObject(rng.choice(sorted(COLORS)), rng.choice(SHAPES), rng.choice(sorted(SIZES)))
        clip = render_clip([obj], rng.choice(MOTIONS), np.random.default_rng([seed, i]), side=side,
                           num_frames=per_clip)
        write_mp4(clip, folder / f"clip{i:02d}.mp4", fps=fps)
        clips.append(folder / f"clip{i:02d}.mp4")
        frames.append(clip)
    film = folder / "film.mp4"
    write_mp4(np.concatenate(frames), film, fps=fps)
    return film, clips, [i * per_clip / fps for i in range(1, num_clips)]


def match(found: Sequence[float], true: Sequence[float], tolerance: float = TOLERANCE) -> tuple[float, float]:
    """(recall, precision): the share of true cuts with a found cut within `tolerance`, and the converse."""
    hit = lambda a, bs: any(abs(a - b) <= tolerance for b in bs)  # noqa: E731
    recall = sum(hit(t, found) for t in true) / max(len(true), 1)
    precision = sum(hit(f, true) for f in found) / max(len(found), 1) if found else 1.0
    return recall, precision


def measure(model, film: Path, true: Sequence[float], detectors: Sequence[str] = ("cnn", "pyscenedetect")) -> list[dict]:
    """Recall, precision and seconds of each detector on `film`."""
    from captioner.api import detect_cuts
    from captioner.segments import SegmentReader

    rows = []
    for name in detectors:
        start = time.perf_counter()
        reader = SegmentReader(film, model.encoder.preprocessing.resize_size)
        try:
            found = detect_cuts(model, reader, name)
        except ImportError as err:
            rows.append({"detector": name, "error": str(err)})
            continue
        recall, precision = match(found, true)
        rows.append({"detector": name, "recall": recall, "precision": precision, "found": len(found),
                     "true": len(true), "seconds": time.perf_counter() - start})
    return rows


def table(rows: Sequence[dict]) -> str:
    lines = ["| detector | cuts found / true | recall (±0.25 s) | precision | seconds |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['detector']} | {r['error']} | | | |")
        else:
            lines.append(f"| {r['detector']} | {r['found']} / {r['true']} | {r['recall']:.2f} | {r['precision']:.2f} "
                         f"| {r['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    import tempfile

    from captioner.api import VideoCaptioner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--clips", type=int, default=31)
    p.add_argument("--side", type=int, default=160)
    args = p.parse_args(argv)
    model = VideoCaptioner.from_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        film, _, true = make_film(Path(tmp), args.clips, side=args.side)
        print(table(measure(model, film, true)))


if __name__ == "__main__":
    main()
