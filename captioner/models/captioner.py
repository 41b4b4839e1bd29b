"""`VideoCaptioner`: frame encoder + temporal pooling + caption decoder + vocabulary, usable without Lightning."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from captioner.features.cache import FeatureSpec
from captioner.data.vocab import Vocabulary
from captioner.models.decoder import CaptionDecoder
from captioner.models.encoder import FrameEncoder
from captioner.models.familiarity import DomainSummary
from captioner.models.temporal import MAX_FRAMES, TemporalEncoder


class CheckpointError(ValueError):
    """A file is missing or is not a captioner checkpoint."""


class ScoredCaption(NamedTuple):
    """A caption with what the model knows of its reliability.

    Attributes:
        text: the caption.
        score: its mean log-probability per word, `<eos>` included (0 is certain; below about -1 the model hesitates).
        familiarity: cosine similarity (0-1) of the video's pooled vector to the nearest prototype of the training
            videos; `None` when the checkpoint has no summary of them (written before 2026-11-30).
        in_domain: `familiarity` at or above the checkpoint's threshold, calibrated on its validation split.
    """

    text: str
    score: float
    familiarity: Optional[float] = None
    in_domain: Optional[bool] = None


_SCORE = re.compile(r"(?:bleu4_|cider_|acc)(\d+\.\d+)(?:-v\d+)?\.ckpt$")  # the score in a best checkpoint's name
_VERSION = re.compile(r"version_\d+")


def run_folder(checkpoint: str | os.PathLike) -> Path:
    """The run a checkpoint file belongs to: the Trainer's `default_root_dir`, above `<logger name>/version_<N>/`
    (`runs/synthetic` for `runs/synthetic/logs/version_1/checkpoints/last.ckpt`); the file's own folder when it
    lies in no version folder (a `ModelCheckpoint` given its own `dirpath`)."""
    checkpoint = Path(checkpoint)
    for folder in checkpoint.parents:
        if _VERSION.fullmatch(folder.name):
            return folder.parent.parent
    return checkpoint.parent


def best_checkpoint(files: Sequence[str | os.PathLike]) -> Path:
    """The best of `files`: the highest score in the name (`epoch18-bleu4_0.5616.ckpt`), the newest on a tie or
    when no name has a score."""

    def rank(f: Path) -> tuple:
        score = _SCORE.search(f.name)
        return float(score.group(1)) if score else float("-inf"), f.stat().st_mtime, str(f)

    return max(map(Path, files), key=rank)


def best_of_run(run_dir: str | os.PathLike, current_best: str | os.PathLike) -> Path:
    """The best checkpoint of the run in `run_dir` (a Trainer's `default_root_dir`): `current_best` (this fit's)
    or the best `epoch*.ckpt` an earlier fit of the run kept in its own version folder, by `find_checkpoint`'s rule.

    A run resumed into a new version folder starts its `ModelCheckpoint` afresh there ("dirpath has changed"), so
    the callback's `best_model_path` is the best of the newest version folder only. Other runs' checkpoints
    (another `default_root_dir` beneath `run_dir`) are left out.
    """
    run_dir = Path(run_dir).resolve()
    earlier = [f for f in run_dir.rglob("epoch*.ckpt")
               if f.is_file() and _SCORE.search(f.name) and run_folder(f.resolve()) == run_dir]
    return best_checkpoint([Path(current_best), *earlier])


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself when it is a file. For a folder (a run root such as `runs/synthetic`, a version folder, a
    `checkpoints/` folder), the best checkpoint beneath it: among the `epoch*.ckpt` files training keeps (one per
    run version, the best on the validation metric, whose score the name carries: `epoch18-bleu4_0.5616.ckpt`),
    the highest score, the newest on a tie or when no name has a score; else the newest `last.ckpt`. A run resumed
    into a new version folder keeps a best checkpoint in each, so the highest score, not the newest file, is the
    run's best. Scores are compared within one run only: a folder above several runs (`runs/`, holding
    `runs/synthetic` and `runs/msvd`: other datasets, other test sets) is refused (see `run_folder`).

    Raises:
        CheckpointError: `path` does not exist, the folder holds no checkpoint, or checkpoints of several runs.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        return path
    found = {pattern: [f for f in path.rglob(pattern) if f.is_file()] for pattern in ("epoch*.ckpt", "last.ckpt")}
    runs = sorted({run_folder(f) for files in found.values() for f in files})
    if len(runs) > 1:
        listed = ", ".join(map(str, runs[:5])) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
        raise CheckpointError(f"{path}: holds the checkpoints of {len(runs)} runs ({listed}), whose scores are not "
                              "comparable: pass one run folder or a checkpoint file")
    for files in found.values():
        if files:
            return best_checkpoint(files)
    raise CheckpointError(f"{path}: no checkpoint in this folder (looked for epoch*.ckpt and last.ckpt beneath it)")


class VideoCaptioner(nn.Module):
    """Video in, sentence out.

    Tensor shapes: frames `(B, T, H, W, 3)` uint8 -> `encoder.preprocess` -> `(B, T, 3, S, S)` float ->
    `encoder` -> features `(B, T, D)` -> `pool` -> video vector `(B, D)` -> `decoder` -> token ids `(B, L)` ->
    text through `vocab`. `encoder`, `pool` and `decoder` are plain `nn.Module`s.

    `generate_defaults` holds the beam size, maximum length and length penalty the checkpoint was evaluated
    with; the `caption*` methods use them unless given other values. `checkpoint_path` is the file it was
    loaded from (`None` when built in code).

    Args:
        vocab: the word vocabulary.
        decoder: the caption decoder (its `feature_dim` is D).
        spec: the backbone, weights and frame count the features come from.
        pool: the `TemporalEncoder`; mean pooling by default (the classic design).
        encoder: the frame encoder; built from `spec` on first use when not given.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        decoder: CaptionDecoder,
        spec: FeatureSpec,
        pool: Optional[TemporalEncoder] = None,
        encoder: Optional[FrameEncoder] = None,
    ):
        super().__init__()
        self.vocab, self.spec = vocab, spec
        self.decoder = decoder
        self.pool = pool if pool is not None else TemporalEncoder("mean", decoder.video_norm.normalized_shape[0])
        self.generate_defaults: dict = {}  # beam_size / max_len / length_penalty / no_repeat_ngram; from a checkpoint
        self.domain: Optional[DomainSummary] = None  # the training videos' summary; from a checkpoint
        self.checkpoint_path: Optional[Path] = None  # the file `from_checkpoint` loaded
        self._encoder = encoder  # not a registered child: its (frozen, pretrained) weights are not checkpointed

    @property
    def encoder(self) -> FrameEncoder:
        """The frozen frame CNN: preprocessed frames `(B, T, 3, S, S)` -> features `(B, T, D)`."""
        if self._encoder is None:
            self._encoder = self.spec.build_encoder()
            self._encoder.to(self.device)
        return self._encoder

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def _apply(self, fn, *args, **kwargs):
        if self._encoder is not None:
            self._encoder._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def generate(
        self,
        feats: torch.Tensor,
        beam_size: int = 5,
        max_len: int = 20,
        length_penalty: float = 0.0,
        mask: Optional[torch.Tensor] = None,
        no_repeat_ngram: int = 3,
        return_scores: bool = False,
    ):
        """Per-frame features `(B, T, D)` -> token ids `(B, <=max_len)` (greedy when `beam_size` is 1).

        `no_repeat_ngram`: the repeats generation forbids (see `captioner.models.decoder.block_repeats`; 0 = off). With
        `return_scores`, `(ids, scores)`: each caption's mean log-probability per word, `<eos>` included `(B,)`.
        """
        ids, scores, _ = self._generate(feats, beam_size, max_len, length_penalty, mask, no_repeat_ngram)
        return (ids, scores) if return_scores else ids

    def _generate(self, feats, beam_size=5, max_len=20, length_penalty=0.0, mask=None, no_repeat_ngram=3):
        """`generate`, plus the pooled video vectors `(B, Dv)` the decoder read.

        All of it in the weights' precision, autocast or not (`bf16-mixed` validation, a user's own autocast): the
        recurrent temporal encoders' vectors, like the decoder's search, would change captions in low precision.
        """
        dev = feats.device.type
        with torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else contextlib.nullcontext():
            video, memory = self.pool.encode(feats.float(), mask)  # (B, T, D) -> (B, Dv), memory (B, T, M) or None
        if beam_size <= 1:
            ids, scores = self.decoder.greedy(video, max_len, memory, mask, no_repeat_ngram, return_scores=True)
        else:
            ids, scores = self.decoder.beam_search(video, beam_size, max_len, length_penalty, memory, mask,
                                                   no_repeat_ngram, return_scores=True)
        return ids, scores, video

    @torch.no_grad()
    def caption_features(self, feats: torch.Tensor, with_scores: bool = False, **generate_kwargs):
        """Captions for per-frame features `(B, T, D)`.

        With `with_scores`, a `ScoredCaption` per video: the text, its mean log-probability per word (`score`),
        and how familiar the video is to the training videos (`familiarity`, `in_domain`; `None` for a checkpoint
        that has no summary of them).
        """
        was_training = self.training
        self.eval()
        ids, scores, video = self._generate(feats.to(self.device, torch.float32),
                                            **{**self.generate_defaults, **generate_kwargs})
        self.train(was_training)
        texts = [self.vocab.decode(row) for row in ids]
        if not with_scores:
            return texts
        if self.domain is None:
            fam, inside = [None] * len(texts), [None] * len(texts)
        else:
            fam = [round(float(f), 4) for f in self.domain.familiarity(video)]
            inside = [f >= self.domain.threshold for f in fam]
        return [ScoredCaption(t, round(float(s), 4), f, i) for t, s, f, i in zip(texts, scores, fam, inside)]

    @torch.no_grad()
    def caption_frames(self, frames: torch.Tensor | np.ndarray, with_scores: bool = False, **generate_kwargs):
        """Captions for uint8 RGB frames `(B, T, H, W, 3)` (or one clip `(T, H, W, 3)`), a tensor or numpy array.

        Raises:
            ValueError: `frames` are not uint8 `(T, H, W, 3)` / `(B, T, H, W, 3)` (floats, channels first, ...).
        """
        frames = as_frames(frames, "frames", batched=None)
        if frames.dim() == 4:
            frames = frames.unsqueeze(0)
        return self.caption_clips(list(frames), with_scores=with_scores, **generate_kwargs)

    @torch.no_grad()
    def caption_clips(self, clips: Sequence[torch.Tensor | np.ndarray], with_scores: bool = False, **generate_kwargs):
        """Captions for uint8 RGB clips `(T, H, W, 3)` (tensors or numpy arrays) whose frame sizes may differ (e.g.
        from `read_clip`); every clip has the same number of frames.

        Raises:
            ValueError: a clip is not uint8 `(T, H, W, 3)`, or the clips' frame counts differ.
        """
        if isinstance(clips, (torch.Tensor, np.ndarray)) and clips.ndim != 5:
            raise ValueError(f"caption_clips takes a list of clips (T, H, W, 3), got one {_described(clips)}: "
                             f"pass [clip], or use caption_frames")
        clips = [as_frames(clip, f"clip {i}", batched=False) for i, clip in enumerate(clips)]
        if not clips:
            return []
        counts = sorted({len(clip) for clip in clips})
        if len(counts) > 1:
            raise ValueError(f"the clips have different frame counts ({', '.join(map(str, counts))}): sample the "
                             f"same number from each (read_clip samples the checkpoint's {self.spec.num_frames})")
        enc = self.encoder.eval()
        x = torch.stack([enc.preprocess(clip.to(self.device)) for clip in clips])  # (B, T, 3, S, S)
        return self.caption_features(enc(x), with_scores=with_scores, **generate_kwargs)

    def read_clip(self, path: str | os.PathLike, num_frames: Optional[int] = None,
                  seek: Optional[str] = None) -> torch.Tensor:
        """Frames `(T, H, W, 3)` of one video file, sampled as in training. Raises `VideoReadError`.

        Args:
            num_frames: frames to sample instead of the checkpoint's `spec.num_frames`.
            seek: `"exact"`, or `"keyframe"` for the approximate, faster sampling of long videos (see
                `read_frames`); default: the checkpoint's `spec.seek`.
        """
        from captioner.data.video import read_frames

        return read_frames(path, num_frames or self.spec.num_frames, self.encoder.preprocessing.resize_size,
                           seek=seek or self.spec.seek)

    def caption(self, paths: str | os.PathLike | Sequence[str | os.PathLike], batch_size: int = 8,
                seek: Optional[str] = None, with_scores: bool = False, **generate_kwargs) -> list:
        """Captions for video files, in order; a directory stands for the video files inside it, sorted.

        `seek="keyframe"` samples the frames approximately, much faster on long videos (see `read_frames`).
        `with_scores=True` gives a `ScoredCaption` per video (see `caption_features`).

        Raises `VideoReadError` naming the first unreadable file (`captioner.inference.caption_videos`, the loop this
        runs, instead reports each failure and captions the other files).
        """
        from captioner.inference import caption_videos

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        results = caption_videos(self, paths, batch_size, seek=seek, strict=True, **generate_kwargs)
        if not with_scores:
            return [r.caption for r in results]
        return [ScoredCaption(r.caption, r.score, r.familiarity, r.in_domain) for r in results]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "VideoCaptioner":
        """Load a checkpoint written by training (`*.ckpt`), safely (`weights_only=True`: no code runs).

        `path` may be a run folder: its best checkpoint is loaded (see `find_checkpoint`); the file is
        `model.checkpoint_path`.

        Raises:
            CheckpointError: the file is missing, unreadable or not a captioner checkpoint.
        """
        path = find_checkpoint(path)
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{path}: not a loadable checkpoint ({_load_failure(err)})") from None
        hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
        if not isinstance(hp, dict) or not hp.get("vocab") or not hp.get("feature_spec") or "state_dict" not in ckpt:
            raise CheckpointError(f"{path}: not a captioner checkpoint (no vocabulary or feature spec inside)")
        try:
            model = build_captioner(hp)
        except (ValueError, TypeError, KeyError) as err:  # e.g. an edited vocabulary or feature spec
            raise CheckpointError(f"{path}: inconsistent captioner checkpoint ({type(err).__name__}: {err})") from None
        state = ckpt["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a captioner checkpoint (its state_dict is not a dict)")
        state = {k[len("model."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            reason = " ".join(str(err).split())[:300]  # torch lists every mismatched tensor, over many lines
            raise CheckpointError(f"{path}: weights do not match the model it describes ({reason})") from None
        model.checkpoint_path = path
        summary = ckpt.get("domain_summary")
        if isinstance(summary, dict) and torch.is_tensor(summary.get("prototypes")):
            model.domain = DomainSummary.from_dict(summary)
        return model.eval().to(map_location)


def _described(x) -> str:
    """`torch.float32 (8, 224, 224, 3)`: the dtype and shape of a tensor or array, for error messages."""
    return f"{x.dtype} {tuple(x.shape)}"


def as_frames(x, name: str = "frames", batched: Optional[bool] = None) -> torch.Tensor:
    """`x` (a tensor or numpy array) as a uint8 tensor of RGB frames `(T, H, W, 3)`, or `(B, T, H, W, 3)` when
    `batched` (either when `None`), without a copy where possible.

    The frame encoder divides by 255 itself, so frames already scaled to [0, 1] would be silently wrong: anything
    else than uint8 is refused with the conversion to use, as are channels-first and grey or RGBA frames.

    Raises:
        ValueError: naming `name`, what it is (type, dtype, shape) and what is expected.
    """
    dims = {None: (4, 5), False: (4,), True: (5,)}[batched]
    expected = " or ".join(("(T, H, W, 3)", "(B, T, H, W, 3)")[d - 4] for d in dims)
    numpy = isinstance(x, np.ndarray)
    if not numpy and not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: got a {type(x).__name__}; expected a uint8 tensor or numpy array of RGB frames "
                         f"{expected}")
    given = f"{name}: got {'a numpy array of ' if numpy else ''}{_described(x)}; expected uint8 RGB frames {expected}"
    if numpy:
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(given)
        # torch warns on read-only arrays (it could write to them): hand it a copy, as it does of odd strides
        x = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else x.copy())
    to_uint8 = ".astype(np.uint8)" if numpy else ".to(torch.uint8)"
    if x.dim() not in dims:
        raise ValueError(given)
    if x.shape[-1] != 3:
        if x.shape[-3] == 3:  # (T, 3, H, W): torchvision's layout
            order = "0, 2, 3, 1" if x.dim() == 4 else "0, 1, 3, 4, 2"
            raise ValueError(f"{given}: channels come first; move them last with "
                             f"x.{'transpose' if numpy else 'permute'}({order})")
        hint = {1: "grey frames: repeat the channel 3 times", 4: "RGBA frames: drop alpha with x[..., :3]"}
        raise ValueError(f"{given}: {hint.get(x.shape[-1], 'the last axis must hold the 3 RGB channels')}")
    if min(x.shape[-4:-1]) == 0:
        raise ValueError(f"{given}: it holds no frame or no pixel")
    if x.dtype != torch.uint8:
        clamp = "clip" if numpy else "clamp"
        if x.is_floating_point():
            high = float(x.max())
            hint = (f"values in [0, 1]: convert with (x * 255).round(){to_uint8}" if high <= 1.0 else
                    f"convert with x.round().{clamp}(0, 255){to_uint8}")
        else:
            hint = f"convert with x.{clamp}(0, 255){to_uint8}"
        raise ValueError(f"{given}: {hint}")
    return x


def _load_failure(err: Exception) -> str:
    """A one-line reason from `torch.load`'s error (its weights-only refusals span a paragraph)."""
    text = str(err).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:  # not a pickle at all, or one that asks to run code: keep only the refused item
        detail = text.split(marker, 1)[1].strip().splitlines()[0].split(". ")[0].rstrip(".")
        return f"not a PyTorch checkpoint, or one holding objects a safe load refuses: {detail}"
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


DECODER_ARGS = ("embed_dim", "hidden_dim", "num_layers", "dropout")
GENERATE_ARGS = ("beam_size", "max_len", "length_penalty", "no_repeat_ngram")


def build_captioner(hp: dict) -> VideoCaptioner:
    """A `VideoCaptioner` from the hyperparameters a checkpoint stores (vocab, feature_spec, temporal encoder, decoder)."""
    vocab = Vocabulary(hp["vocab"])
    spec = FeatureSpec(**hp["feature_spec"])
    # the attention kind has a position per frame: as many as the data samples (at least the 64 of old checkpoints)
    pool = TemporalEncoder(hp.get("temporal", "mean"), int(hp["feature_dim"]), hp.get("temporal_hidden_dim", 512),
                           hp.get("dropout", 0.3), max_frames=max(MAX_FRAMES, spec.num_frames))
    decoder = CaptionDecoder(len(vocab), pool.output_dim, **{k: hp[k] for k in DECODER_ARGS if k in hp},
                             memory_dim=pool.memory_dim, pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)
    model = VideoCaptioner(vocab, decoder, spec, pool)
    model.generate_defaults = {k: hp[k] for k in GENERATE_ARGS if hp.get(k) is not None}
    return model
