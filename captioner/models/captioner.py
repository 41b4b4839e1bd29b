"""`VideoCaptioner`: frame encoder + temporal pooling + caption decoder + vocabulary, usable without Lightning."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from captioner.checkpointing import CheckpointError, find_checkpoint, read_checkpoint
from captioner.config import CONFIG_KEY, CaptionerConfig, FeatureSpec
from captioner.models.decoder import CaptionDecoder
from captioner.models.encoder import FrameEncoder
from captioner.models.familiarity import DomainSummary
from captioner.models.temporal import MAX_FRAMES, TemporalEncoder
from captioner.vocab import Vocabulary


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


class VideoCaptioner(nn.Module):
    """Video in, sentence out.

    Tensor shapes: frames `(B, T, H, W, 3)` uint8 -> `encoder.preprocess` -> `(B, T, 3, S, S)` float ->
    `encoder` -> features `(B, T, D)` -> `pool` -> video vector `(B, D)` -> `decoder` -> token ids `(B, L)` ->
    text through `vocab`. `encoder`, `pool` and `decoder` are plain `nn.Module`s.

    `generate_defaults` holds the beam size, maximum length and length penalty the checkpoint was evaluated
    with; the `caption*` methods use them unless given other values. `checkpoint_path` is the file it was
    loaded from (`None` when built in code). `config` is the architecture it was built from (`from_config`);
    `None` when composed of modules given here.

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
        self.config: Optional[CaptionerConfig] = None
        self.decoder = decoder
        self.pool = pool if pool is not None else TemporalEncoder("mean", decoder.video_norm.normalized_shape[0])
        self.generate_defaults: dict = {}  # beam_size / max_len / length_penalty / no_repeat_ngram; from a checkpoint
        self.domain: Optional[DomainSummary] = None  # the training videos' summary; from a checkpoint
        self.checkpoint_path: Optional[Path] = None  # the file `from_checkpoint` loaded
        self._encoder = encoder  # not a registered child: its (frozen, pretrained) weights are not checkpointed

    @classmethod
    def from_config(cls, config: CaptionerConfig, vocab: Vocabulary, spec: FeatureSpec) -> "VideoCaptioner":
        """A new captioner of the architecture `config` for `vocab` and features of `spec`, initialised from the
        global random state (the temporal encoder first, then the decoder)."""
        # the attention kind has a position per frame: as many as the data samples (at least the 64 of old checkpoints)
        pool = TemporalEncoder(config.temporal, config.feature_dim, config.temporal_hidden_dim, config.dropout,
                               max_frames=max(MAX_FRAMES, spec.num_frames))
        decoder = CaptionDecoder(len(vocab), pool.output_dim, config.embed_dim, config.hidden_dim, config.num_layers,
                                 config.dropout, memory_dim=pool.memory_dim, pad_id=vocab.pad_id, bos_id=vocab.bos_id,
                                 eos_id=vocab.eos_id)
        model = cls(vocab, decoder, spec, pool)
        model.config = config
        return model

    @property
    def encoder(self) -> FrameEncoder:
        """The frozen frame CNN: preprocessed frames `(B, T, 3, S, S)` -> features `(B, T, D)`."""
        if self._encoder is None:
            self._encoder = FrameEncoder.from_spec(self.spec)
            self._encoder.to(self.device)
        return self._encoder

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def _apply(self, fn, *args, **kwargs):
        if self._encoder is not None:
            self._encoder._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def encode_video(self, feats: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """Per-frame features `(B, T, D)` (and an optional `(B, T)` mask of real frames) -> what the decoder reads:
        `(video vector (B, Dv), attention memory (B, T, M) or None)`."""
        return self.pool.encode(feats, mask)

    def loss(self, feats: torch.Tensor, captions: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher-forced, padding-masked cross-entropy of captions `(B, S)` (`<bos> w1 .. wn <eos> <pad>..`) given
        their videos' features `(B, T, D)`."""
        video, memory = self.encode_video(feats, mask)  # (B, T, D) -> (B, Dv), memory or None
        return self.decoder.loss(video, captions, memory, mask)

    def sample(self, encoded: tuple, num_samples: int = 5, max_len: int = 20, no_repeat_ngram: int = 0):
        """`num_samples` captions drawn per video of `encoded` (`encode_video`'s output), with gradients, for
        self-critical training: token ids `(B * K, <=max_len)` and each word's log-probability (see
        `CaptionDecoder.sample`)."""
        video, memory = encoded
        return self.decoder.sample(video, num_samples, max_len, memory, no_repeat_ngram=no_repeat_ngram)

    def greedy(self, encoded: tuple, max_len: int = 20, no_repeat_ngram: int = 3) -> torch.Tensor:
        """The greedy captions `(B, <=max_len)` of `encoded` (`encode_video`'s output) as the model gives them: the
        decoder in eval mode (no dropout), then back in its mode. Self-critical training's 2017 baseline."""
        video, memory = encoded
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            return self.decoder.greedy(video, max_len, memory, no_repeat_ngram=no_repeat_ngram)
        finally:
            self.decoder.train(was_training)

    @torch.no_grad()
    def video_vectors(self, feats: torch.Tensor) -> torch.Tensor:
        """The video vectors `(B, Dv)` the decoder reads for features `(B, T, D)`, without dropout whatever the
        model's mode: what `captioner.models.familiarity` compares."""
        was_training = self.pool.training
        self.pool.eval()
        try:
            return self.encode_video(feats.float())[0]
        finally:
            self.pool.train(was_training)

    @property
    def video_is_frame_mean(self) -> bool:
        """Whether the video vector is the mean of the frame features (the mean and attention kinds), which no
        weight changes."""
        return self.pool.rnn is None

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
            video, memory = self.encode_video(feats.float(), mask)  # (B, T, D) -> (B, Dv), memory (B, T, M) or None
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
        feats = self.encoder.eval().encode_clips(clips)  # (B, T, H, W, 3) clips -> (B, T, D)
        return self.caption_features(feats, with_scores=with_scores, **generate_kwargs)

    def read_clip(self, path: str | os.PathLike, num_frames: Optional[int] = None,
                  seek: Optional[str] = None) -> torch.Tensor:
        """Frames `(T, H, W, 3)` of one video file, sampled as in training. Raises `VideoReadError`.

        Args:
            num_frames: frames to sample instead of the checkpoint's `spec.num_frames`.
            seek: `"exact"`, or `"keyframe"` for the approximate, faster sampling of long videos (see
                `read_frames`); default: the checkpoint's `spec.seek`.
        """
        from captioner.video import read_frames

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
        return cls.from_loaded(read_checkpoint(path, map_location), path, map_location)

    @classmethod
    def from_loaded(cls, ckpt: dict, path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> "VideoCaptioner":
        """The captioner in a checkpoint already read by `captioner.checkpointing.read_checkpoint` from `path`
        (for a caller that also reads the checkpoint's other entries: the file is read once).

        Raises:
            CheckpointError: the checkpoint is inconsistent, or its weights do not match the model it describes.
        """
        path = Path(path)
        hp = ckpt["hyper_parameters"]
        try:
            stored = ckpt.get(CONFIG_KEY)  # absent from checkpoints written before issue 16: their hyperparameters
            model = build_captioner(hp, CaptionerConfig(**stored) if isinstance(stored, dict) else None)
        except (ValueError, TypeError, KeyError) as err:  # e.g. an edited vocabulary or feature spec
            raise CheckpointError(f"{path}: inconsistent captioner checkpoint ({type(err).__name__}: {err})") from None
        state = ckpt["state_dict"]
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


GENERATE_ARGS = ("beam_size", "max_len", "length_penalty", "no_repeat_ngram")


def build_captioner(hp: Mapping[str, Any], config: Optional[CaptionerConfig] = None) -> VideoCaptioner:
    """A new `VideoCaptioner` from flat hyperparameters (the training system's, a checkpoint's `hyper_parameters`):
    their vocabulary, feature spec and generation defaults, and the architecture `config` (default: theirs,
    `CaptionerConfig.from_hparams`)."""
    vocab = Vocabulary(hp["vocab"])
    spec = FeatureSpec(**hp["feature_spec"])
    model = VideoCaptioner.from_config(config or CaptionerConfig.from_hparams(hp), vocab, spec)
    model.generate_defaults = {k: hp[k] for k in GENERATE_ARGS if hp.get(k) is not None}
    return model
