"""One self-contained HTML page of captions beside the frames the model saw (`--html` of `evaluate` and `caption`).

The page holds everything inline: each video's sampled frames as one small JPEG strip (base64), a few lines of
CSS and of JavaScript for sorting (score, familiarity, per-video BLEU-4 / CIDEr-D) and filtering by text. The
sort and the filter live in the URL's hash (`report.html#sort=score-asc&q=dog`), so a link opens the same view.
"""

from __future__ import annotations

import base64
import datetime
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence, Union

from captioner.errors import SettingsError

if TYPE_CHECKING:
    import torch

    from captioner.data.datasets import Clip
    from captioner.api import CaptionResult, VideoCaptioner

PathLike = Union[str, os.PathLike]

# A strip is THUMB_HEIGHT px high, lower (down to MIN_THUMB_HEIGHT) when its frames would not fit STRIP_WIDTH: 8
# frames of a 4:3 video make a 680x64 strip, 20 frames (MSR-VTT's) a 1060x40 one; about 10 kB each for real video
THUMB_HEIGHT, MIN_THUMB_HEIGHT, STRIP_WIDTH = 64, 40, 720
JPEG_QUALITY = 60
# (key, label): the per-video values the page sorts by, when any card has them
SORT_KEYS = (("score", "score"), ("familiarity", "familiarity"), ("bleu4", "BLEU-4"), ("cider", "CIDEr-D"))
PER_VIDEO_NOTE = ("Per video: BLEU-4 is NLTK's sentence_bleu against all references (smoothing method 1, so a "
                  "missing 4-gram does not zero it); CIDEr-D is coco-caption's (captioner.metrics.CiderD), with "
                  "document frequencies from the references of every video on this page. score: mean log-probability "
                  "per word (0 = certain). "
                  "familiarity: similarity (0-1) to the training videos.")


@dataclass
class Card:
    """One video on the page: its caption or the error that stopped it, and whatever is known about it."""

    video: str
    path: Optional[str] = None
    caption: Optional[str] = None
    error: Optional[str] = None
    references: Sequence[str] = ()
    bleu4: Optional[float] = None
    cider: Optional[float] = None
    score: Optional[float] = None
    familiarity: Optional[float] = None
    in_domain: Optional[bool] = None
    strip: Optional[str] = None  # base64 JPEG of the sampled frames side by side
    strip_error: Optional[str] = None  # why there are no frames to show
    start: Optional[float] = None  # a segment's time, seconds (`captioner caption --segments`)
    end: Optional[float] = None

    @property
    def time(self) -> str:
        """`0:00:10.0 – 0:00:20.0` for a segment, "" for a whole video."""
        if self.start is None:
            return ""
        clock = lambda t: f"{int(t // 3600)}:{int(t % 3600 // 60):02d}:{t % 60:04.1f}"  # noqa: E731
        return f"{clock(self.start)} – {clock(self.end)}"

    @property
    def sort_values(self) -> dict[str, str]:
        """`data-*` attributes of the card: the values the page sorts by, where known."""
        values = {k: getattr(self, k) for k, _ in SORT_KEYS}
        return {k: f"{v:.6g}" for k, v in values.items() if v is not None}


def strip_height(num_frames: int, aspect: float) -> int:
    """Thumbnail height for `num_frames` frames of width/height `aspect`: THUMB_HEIGHT unless that is wider than
    STRIP_WIDTH, never below MIN_THUMB_HEIGHT."""
    fits = int(STRIP_WIDTH / max(num_frames * aspect, 1e-6))
    return max(MIN_THUMB_HEIGHT, min(THUMB_HEIGHT, fits))


def strip_jpeg(frames: "torch.Tensor", height: Optional[int] = None, quality: int = JPEG_QUALITY) -> bytes:
    """uint8 frames `(T, H, W, 3)` -> one JPEG of the frames side by side, `height` pixels high (default:
    `strip_height`)."""
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.io import encode_jpeg

    x = frames.permute(0, 3, 1, 2)  # (T, H, W, 3) -> (T, 3, H, W)
    if height is None:
        height = strip_height(x.shape[0], x.shape[-1] / x.shape[-2])
    width = max(1, round(x.shape[-1] * height / x.shape[-2]))
    x = TF.resize(x.cpu(), [height, width], antialias=True)  # (T, 3, height, width)
    strip = torch.cat(list(x), dim=-1)  # (3, height, T * width)
    return encode_jpeg(strip.contiguous(), quality=quality).numpy().tobytes()


class FrameStrips:
    """Frame strips of the clips captioning reads, made as it reads them: the report decodes no clip twice.

    `add` is the `on_clip` hook of `VideoCaptioner.caption_results`; `strips` maps a path, as read, to its JPEG
    strip.
    """

    def __init__(self, height: Optional[int] = None):
        self.height = height
        self.strips: dict[str, bytes] = {}

    def add(self, path: PathLike, frames: "torch.Tensor") -> None:
        """Keep the strip of `frames` `(T, H, W, 3)` uint8, read from `path`."""
        self.strips[str(path)] = strip_jpeg(frames, self.height)


def check_report_path(path: PathLike) -> Path:
    """`path` if a report can be written there (its folder exists), else a `SettingsError` saying what to do."""
    path = Path(path)
    if path.is_dir():
        raise SettingsError(f"--html {path} is a folder: give a file name such as {path / 'report.html'}")
    if not path.parent.is_dir():
        raise SettingsError(f"--html {path}: the folder {path.parent} does not exist (create it first)")
    return path


def per_video_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]
                      ) -> tuple[list[float], list[float]]:
    """Each caption's BLEU-4 (NLTK, smoothed) and CIDEr-D (document frequencies from all these references)."""
    import warnings

    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from captioner.metrics import CiderD
    from captioner.vocab import tokenize

    smooth = SmoothingFunction().method1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # NLTK on empty captions or references
        bleu4 = [float(sentence_bleu([tokenize(r) for r in refs], tokenize(h), smoothing_function=smooth))
                 if refs else 0.0 for h, refs in zip(hypotheses, references)]
    if not hypotheses:
        return bleu4, []
    return bleu4, [float(s) for s in CiderD.of_captions(references).caption_scores(hypotheses)]


def add_strips(cards: Sequence[Card], strips: Optional[FrameStrips], read_clip: Callable[[str], "torch.Tensor"],
               progress: bool = True, height: Optional[int] = None) -> None:
    """Give every card with a path its frame strip: the one recorded while captioning, else read now."""
    from tqdm.auto import tqdm

    from captioner.video import VideoReadError

    known = strips.strips if strips is not None else {}
    todo = [c for c in cards if c.path and not c.error and str(c.path) not in known]
    with tqdm(total=len(todo), desc="Reading frames for the report", unit="video", file=sys.stderr,
              disable=not progress or not todo, dynamic_ncols=True) as bar:
        for card in cards:
            if not card.path or card.error:
                continue
            jpeg = known.get(str(card.path))
            if jpeg is None:
                try:
                    jpeg = strip_jpeg(read_clip(card.path), height)
                except VideoReadError as err:
                    card.strip_error = f"frames not shown: {err.reason}"
                except Exception as err:  # a decoder failing in a way nobody foresaw: this card only
                    card.strip_error = f"frames not shown: {type(err).__name__}: {err}"
                bar.update(1)
            if jpeg is not None:
                card.strip = base64.b64encode(jpeg).decode("ascii")


def render(cards: Sequence[Card], title: str, meta: Iterable[tuple[str, str]] = (),
           metrics: Optional[dict[str, float]] = None, notes: Iterable[str] = ()) -> str:
    """The page's HTML (Jinja2, autoescaped: captions and paths can hold any text)."""
    import jinja2

    template = resources.files("captioner").joinpath("templates/report.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    present = {k for c in cards for k in c.sort_values}
    sort_options = [("order-asc", "file order")]
    for key, label in SORT_KEYS:
        if key in present:
            sort_options += [(f"{key}-asc", f"{label}: lowest first"), (f"{key}-desc", f"{label}: highest first")]
    return env.from_string(template).render(
        title=title, meta=list(meta), metrics=metrics or {}, notes=list(notes), cards=cards,
        sort_options=sort_options, timeline=any(c.start is not None for c in cards))


def write_page(path: PathLike, html: str) -> Path:
    """Write the page atomically; returns its path."""
    from captioner.io import write_text_atomic

    path = Path(path)
    write_text_atomic(path, html)
    return path


def _generation_text(generation: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in generation.items())


def _written() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def write_evaluation_report(path: PathLike, report: dict, predictions: Sequence[dict], clips: Sequence["Clip"],
                            model: "VideoCaptioner", strips: Optional[FrameStrips] = None,
                            progress: bool = True) -> Path:
    """The page of `captioner evaluate --html`: one card per clip of the split, unreadable ones with their error.

    Args:
        report, predictions: what `evaluate` writes to `metrics.json` and `predictions.json`.
        clips: the split's clips (their paths); frames not recorded by `strips` are read from them.
    """
    paths = {c.id: str(c.path) for c in clips}
    bleu4, cider = per_video_metrics([p["caption"] for p in predictions], [p["references"] for p in predictions])
    cards = [Card(p["video"], paths.get(p["video"]), caption=p["caption"], references=p["references"],
                  bleu4=bleu4[i], cider=cider[i], score=p.get("score"),
                  familiarity=p.get("familiarity"), in_domain=p.get("in_domain"))
             for i, p in enumerate(predictions)]
    cards += [Card(s["video"], paths.get(s["video"]), error=s["reason"]) for s in report.get("skipped", [])]
    add_strips(cards, strips, model.read_clip, progress, strips.height if strips else None)
    meta = [("checkpoint", report["checkpoint"]), ("dataset", report["data_dir"]),
            ("split", f"{report['split']}: {report['num_clips']} clips captioned"
                      + (f", {len(report['skipped'])} unreadable" if report.get("skipped") else "")),
            ("generation", _generation_text(report["generation"])),
            ("frames", f"{model.spec.num_frames} per clip, as the model sampled them"),
            ("features", f"{report['features_from_cache']} from the cache, {report['features_from_video']} "
                         "encoded from the video"),
            ("metric tokenizer", report.get("tokenizer", "project"))]
    if report.get("in_domain") is not None:
        meta.append(("in domain", f"{report['in_domain']:.0%} of the clips"))
    meta.append(("written", _written()))
    notes = [f"{k}: {why}" for k, why in report.get("unavailable", {}).items()]
    notes.append(PER_VIDEO_NOTE)
    title = f"captioner evaluate: {report['split']} split of {Path(report['data_dir']).name}"
    return write_page(path, render(cards, title, meta, report["metrics"], notes))


def write_caption_report(path: PathLike, results: Sequence["CaptionResult"], model: "VideoCaptioner",
                         strips: Optional[FrameStrips], generation: dict, num_frames: Optional[int] = None,
                         progress: bool = True) -> Path:
    """The page of `captioner caption --html`: one card per video given, failures with their error."""
    cards = [Card(r.video, r.key, caption=r.caption, error=r.error, score=r.score, familiarity=r.familiarity,
                  in_domain=r.in_domain, start=r.start, end=r.end) for r in results]
    add_strips(cards, strips, lambda p: model.read_clip(p, num_frames), progress,
               strips.height if strips else None)
    failed = sum(1 for r in results if not r.ok)
    timeline = any(r.start is not None for r in results)
    what = f"{len({r.video for r in results})} videos, {len(results)} segments" if timeline else f"{len(results)}"
    meta = [("checkpoint", str(model.checkpoint_path)),
            ("videos", what + (f", {failed} could not be captioned" if failed else "")),
            ("generation", _generation_text(generation)),
            ("frames", f"{num_frames or model.spec.num_frames} per video, as the model sampled them")]
    if model.domain is not None:
        meta.append(("in domain", f"familiarity >= {model.domain.threshold:.2f}"))
    meta.append(("written", _written()))
    notes = ["score: mean log-probability per word (0 = certain). familiarity: similarity (0-1) to the training "
             "videos."]
    if timeline:
        notes.append("A timeline: one row per segment, with its time in the video and the frames the model saw.")
    return write_page(path, render(cards, "captioner caption", meta, None, notes))
