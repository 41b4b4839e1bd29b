"""`CaptionModel`: frame encoder + temporal pooling + caption decoder + vocabulary, frames or features in, text out."""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from captioner.config import GENERATION, CaptionerConfig, FeatureSpec, GenerationConfig
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
            videos; `None` when the model has no summary of them (`domain`).
        in_domain: `familiarity` at or above the summary's threshold, calibrated on held-out training videos.
    """

    text: str
    score: float
    familiarity: Optional[float] = None
    in_domain: Optional[bool] = None


class Generated(NamedTuple):
    """What `CaptionModel.generate` gives for a batch of B videos."""

    ids: torch.Tensor  # (B, <=max_len) token ids, `<pad>` after `<eos>`
    scores: torch.Tensor  # (B,) each caption's mean log-probability per word, `<eos>` included
    video: torch.Tensor  # (B, Dv) the pooled video vectors the decoder read (what familiarity compares)


class CaptionModel(nn.Module):
    """Video in, sentence out: a plain `nn.Module`, no files read (see `captioner.api.VideoCaptioner` for that).

    Tensor shapes: frames `(B, T, H, W, 3)` uint8 -> `encoder.preprocess` -> `(B, T, 3, S, S)` float ->
    `encoder` -> features `(B, T, D)` -> `pool` -> video vector `(B, D)` -> `decoder` -> token ids `(B, L)` ->
    text through `vocab`.

    Attributes:
        generation: the settings captions are generated with unless a call gives others (a checkpoint's own: the
            ones it was validated with).
        domain: the training videos' summary (`captioner.models.familiarity`) that `familiarity` and `in_domain`
            come from; `None`: unknown.
        config: the architecture it was built from (`from_config`); `None` when composed of modules given here.

    Args:
        vocab: the word vocabulary.
        decoder: the caption decoder (its `feature_dim` is D).
        spec: the backbone, weights and frame count the features come from.
        pool: the `TemporalEncoder`; mean pooling by default (the classic design).
        encoder: the frame encoder; built from `spec` on first use when not given.
        generation: default `GenerationConfig()`.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        decoder: CaptionDecoder,
        spec: FeatureSpec,
        pool: Optional[TemporalEncoder] = None,
        encoder: Optional[FrameEncoder] = None,
        generation: Optional[GenerationConfig] = None,
    ):
        super().__init__()
        self.vocab, self.spec = vocab, spec
        self.config: Optional[CaptionerConfig] = None
        self.decoder = decoder
        self.pool = pool if pool is not None else TemporalEncoder("mean", decoder.video_norm.normalized_shape[0])
        self.generation = generation or GenerationConfig()
        self.domain: Optional[DomainSummary] = None
        self.attach_encoder(encoder)

    @classmethod
    def from_config(cls, config: CaptionerConfig, vocab: Vocabulary, spec: FeatureSpec,
                    generation: Optional[GenerationConfig] = None):
        """A new model of the architecture `config` for `vocab` and features of `spec`, initialised from the
        global random state (the temporal encoder first, then the decoder)."""
        # the attention kind has a position per frame: as many as the data samples (at least the 64 of old checkpoints)
        pool = TemporalEncoder(config.temporal, config.feature_dim, config.temporal_hidden_dim, config.dropout,
                               max_frames=max(MAX_FRAMES, spec.num_frames))
        decoder = CaptionDecoder(len(vocab), pool.output_dim, config.embed_dim, config.hidden_dim, config.num_layers,
                                 config.dropout, memory_dim=pool.memory_dim, pad_id=vocab.pad_id, bos_id=vocab.bos_id,
                                 eos_id=vocab.eos_id)
        model = cls(vocab, decoder, spec, pool, generation=generation)
        model.config = config
        return model

    def attach_encoder(self, encoder: Optional[FrameEncoder]) -> None:
        """Use `encoder` as the frame CNN (`None`: built from the spec when first needed). It is kept out of the
        registered children, so its (frozen, pretrained) weights are in no `state_dict`: not checkpointed, and not
        saved twice by `save_pretrained` (which writes them apart) once captioning has built it."""
        object.__setattr__(self, "_encoder", encoder)  # nn.Module's own __setattr__ would register it

    @property
    def encoder(self) -> FrameEncoder:
        """The frozen frame CNN: preprocessed frames `(B, T, 3, S, S)` -> features `(B, T, D)`."""
        if self._encoder is None:
            self.attach_encoder(FrameEncoder.from_spec(self.spec).to(self.device))
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

    def sample(self, encoded: tuple, num_samples: int = 5, max_len: int = GENERATION.max_len,
               no_repeat_ngram: int = 0):
        """`num_samples` captions drawn per video of `encoded` (`encode_video`'s output), with gradients, for
        self-critical training: token ids `(B * K, <=max_len)` and each word's log-probability (see
        `CaptionDecoder.sample`)."""
        video, memory = encoded
        return self.decoder.sample(video, num_samples, max_len, memory, no_repeat_ngram=no_repeat_ngram)

    def greedy(self, encoded: tuple, max_len: int = GENERATION.max_len,
               no_repeat_ngram: int = GENERATION.no_repeat_ngram) -> torch.Tensor:
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

    def generate(self, feats: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 generation: Optional[GenerationConfig] = None, **overrides: Any) -> Generated:
        """Per-frame features `(B, T, D)` -> `Generated(ids (B, <=max_len), scores (B,), video vectors (B, Dv))`,
        in the model's current mode (greedy when `beam_size` is 1).

        Args:
            mask: `(B, T)`, True for real frames (padded clips).
            generation: the settings (default: `self.generation`), with `overrides` (`beam_size=1`, ...; `None`
                keeps the setting) merged in once, here.

        All of it runs in the weights' precision, autocast or not (`bf16-mixed` validation, a user's own autocast):
        the recurrent temporal encoders' vectors, like the decoder's search, would change captions in low precision.
        """
        g = (generation or self.generation).merged(**overrides)
        dev = feats.device.type
        with torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else contextlib.nullcontext():
            video, memory = self.encode_video(feats.float(), mask)  # (B, T, D) -> (B, Dv), memory (B, T, M) or None
        if g.beam_size <= 1:
            ids, scores = self.decoder.greedy(video, g.max_len, memory, mask, g.no_repeat_ngram, return_scores=True,
                                              min_len=g.min_len)
        else:
            ids, scores = self.decoder.beam_search(video, g.beam_size, g.max_len, g.length_penalty, memory, mask,
                                                   g.no_repeat_ngram, return_scores=True, min_len=g.min_len)
        return Generated(ids, scores, video)

    @torch.no_grad()
    def caption_features(self, feats: torch.Tensor, with_scores: bool = False,
                         generation: Optional[GenerationConfig] = None, **overrides: Any) -> list:
        """Captions for per-frame features `(B, T, D)`, in eval mode (`generate`'s `generation` and `overrides`).

        With `with_scores`, a `ScoredCaption` per video: the text, its mean log-probability per word (`score`),
        and how familiar the video is to the training videos (`familiarity`, `in_domain`; `None` without `domain`).
        """
        was_training = self.training
        self.eval()
        try:
            ids, scores, video = self.generate(feats.to(self.device, torch.float32), None, generation, **overrides)
        finally:
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
    def caption_frames(self, frames: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
                       with_scores: bool = False, generation: Optional[GenerationConfig] = None,
                       **overrides: Any) -> list:
        """Captions for uint8 RGB frames: clips `(B, T, H, W, 3)` or one clip `(T, H, W, 3)` (a tensor or numpy
        array), or a list of clips `(T, H, W, 3)` whose frame sizes may differ (e.g. from `read_clip`); every clip
        has the same number of frames. Generation as `caption_features`.

        Raises:
            ValueError: frames are not uint8 `(T, H, W, 3)` / `(B, T, H, W, 3)` (floats, channels first, ...), or
                the clips' frame counts differ.
        """
        if isinstance(frames, (torch.Tensor, np.ndarray)):
            frames = as_frames(frames, "frames", batched=None)
            clips = [frames] if frames.dim() == 4 else list(frames)
        else:
            clips = [as_frames(clip, f"clip {i}", batched=False) for i, clip in enumerate(frames)]
        if not clips:
            return []
        counts = sorted({len(clip) for clip in clips})
        if len(counts) > 1:
            raise ValueError(f"the clips have different frame counts ({', '.join(map(str, counts))}): sample the "
                             f"same number from each (read_clip samples the checkpoint's {self.spec.num_frames})")
        feats = self.encoder.eval().encode_clips(clips)  # (B, T, H, W, 3) clips -> (B, T, D)
        return self.caption_features(feats, with_scores, generation, **overrides)


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
