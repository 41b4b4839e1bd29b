"""Temporal encoders: turn per-frame features into a video vector (and, for attention, a memory over frames)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from captioner.config import TEMPORAL_CHOICES, TemporalKind
from captioner.models.encoder import MeanPool

MAX_FRAMES = 64  # the attention kind's position embedding rows before the data's frame count was passed in


class TemporalEncoder(nn.Module):
    """Per-frame features `(B, T, D)` -> video vector `(B, Dv)` and an optional memory `(B, T, Dm)`.

    Kinds:
        mean: average over time, order-blind (the classic design of Venugopalan et al., 2015).
        lstm, gru: a recurrent layer reads the frames in order; its final state is the video vector (as S2VT's
            encoder).
        attention: mean-pooled video vector to start the decoder, which then attends over the frame features at
            every word step (soft temporal attention, as SA-LSTM). A weighted sum is blind to order, so each
            frame's feature gets a learned embedding of its position in the clip.
        lstm_attention, gru_attention: the decoder attends over all the recurrent layer's outputs.

    Args:
        kind: one of `TEMPORAL_CHOICES`.
        feature_dim: D.
        hidden_dim: size of the recurrent layer (recurrent kinds only).
        dropout: dropout on the frame features before the recurrent layer.
        max_frames: longest clip (in sampled frames) the `attention` kind's position embedding covers;
            `CaptionModel.from_config` passes `max(MAX_FRAMES, num_frames)` of the data, so checkpoints written
            before it did (64 rows) load unchanged.
    """

    def __init__(self, kind: TemporalKind = "mean", feature_dim: int = 1280, hidden_dim: int = 512,
                 dropout: float = 0.3, max_frames: int = MAX_FRAMES):
        super().__init__()
        if kind not in TEMPORAL_CHOICES:
            raise ValueError(f"unknown temporal encoder {kind!r}; choose from {', '.join(TEMPORAL_CHOICES)}")
        self.kind, self.feature_dim = kind, feature_dim
        self.attends = kind.endswith("attention")
        cell = kind.split("_")[0]
        if cell in ("lstm", "gru"):
            self.norm = nn.LayerNorm(feature_dim)
            self.drop = nn.Dropout(dropout)
            self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(feature_dim, hidden_dim, batch_first=True)
            self.output_dim = hidden_dim
        else:
            self.rnn = None
            self.mean = MeanPool()
            self.output_dim = feature_dim
            if self.attends:
                self.position = nn.Embedding(max_frames, feature_dim)
                nn.init.normal_(self.position.weight, std=0.1)
        self.memory_dim: Optional[int] = self.output_dim if self.attends else None

    def forward(self, feats: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features `(B, T, D)` and an optional `(B, T)` mask of real frames -> video vector `(B, Dv)`."""
        return self.encode(feats, mask)[0]

    def encode(
        self, feats: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Features `(B, T, D)` and an optional `(B, T)` mask -> `(video (B, Dv), memory (B, T, Dm) or None)`."""
        if self.rnn is None:
            if not self.attends:
                return self.mean(feats, mask), None
            t = feats.shape[1]
            if t > self.position.num_embeddings:
                raise ValueError(f"{t} frames per clip, but this attention encoder has positions for at most "
                                 f"{self.position.num_embeddings}: sample at most that many frames per clip")
            return self.mean(feats, mask), feats + self.position.weight[:t]  # (B, T, D) + (T, D)
        x = self.drop(self.norm(feats))
        if mask is None:
            out, state = self.rnn(x)
        else:  # padded frames must not reach the final state
            lengths = mask.sum(1).clamp_min(1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, state = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=feats.shape[1])
        h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c); GRU: h
        return h[-1], (out if self.attends else None)  # (1, B, H) -> (B, H); out: (B, T, H)
