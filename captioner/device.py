"""The one device rule of every command."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(device: str = "auto") -> "torch.device":
    """The one device rule of every command: `auto` -> CUDA when available, else CPU; `cuda` without a GPU raises
    `ValueError`."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no GPU is available (use --device cpu or auto)")
    return torch.device(device)
