"""A captioner as ONNX graphs: the encoder (frames -> video vector), the decoder's start (video vector -> first
state) and one decoder step (word, state, video vector -> log-probabilities, new state); the search runs outside."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from captioner.errors import SettingsError
from captioner.models.captioner import CaptionModel

ENCODER_ONNX, START_ONNX, STEP_ONNX = "encoder.onnx", "decoder_start.onnx", "decoder_step.onnx"
ONNX_FILES = (ENCODER_ONNX, START_ONNX, STEP_ONNX)
OPSET = 17


class EncoderGraph(nn.Module):
    """Cropped uint8 frames `(B, T, 3, S, S)` -> video vector `(B, Dv)`: the frame CNN (normalisation included) and
    the temporal encoder, in eval mode. The vector is what familiarity compares, so it is the graph's output."""

    def __init__(self, model: CaptionModel):
        super().__init__()
        encoder = model.encoder
        self.net, self.pool = encoder, model.pool
        p = encoder.preprocessing
        self.register_buffer("mean", torch.tensor(p.mean).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(p.std).view(3, 1, 1))

    def forward(self, frames: torch.Tensor):
        x = (frames.float() / 255.0 - self.mean) / self.std  # as FrameEncoder.normalize
        feats = self.net(x)  # (B, T, 3, S, S) -> (B, T, D)
        video, _ = self.pool.encode(feats)  # (B, T, D) -> (B, Dv)
        return video


class StartGraph(nn.Module):
    """Video vectors `(B, Dv)` -> the decoder's first state `(L, B, H)` x 2 (`CaptionDecoder.start`)."""

    def __init__(self, model: CaptionModel):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, video: torch.Tensor):
        _, (h, c) = self.decoder.start(video)
        return h, c


class StepGraph(nn.Module):
    """One generation step of `CaptionDecoder` without attention: words `(N,)`, state `(L, N, H)` x 2 and video
    vectors `(N, Dv)` -> log-probabilities `(N, V)` (`<pad>`, `<bos>`, `<unk>` at -inf, as `_step`), new state.

    The video vector goes in at every step rather than its projection: the search only reorders rows, and the two
    small layers that turn it into the context cost little next to the LSTM and the output layer.
    """

    def __init__(self, model: CaptionModel):
        super().__init__()
        self.decoder = model.decoder
        never = torch.zeros(model.decoder.vocab_size)
        never[model.decoder.never_generated] = float("-inf")
        self.register_buffer("never", never)

    def forward(self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor, video: torch.Tensor):
        d = self.decoder
        ctx = d.video_proj(d.video_norm(video))  # (N, Dv) -> (N, E)
        x = torch.cat([d.embed(tokens), ctx], dim=-1).unsqueeze(1)  # (N, 1, 2E)
        out, (h, c) = d.lstm(x, (h, c))  # (N, 1, H)
        logits = d.out(out[:, 0]) + self.never  # (N, V)
        return F.log_softmax(logits, dim=-1), h, c


def check_exportable(model: CaptionModel) -> None:
    """Raise `SettingsError` (one line) for a model whose decoder attends over frames: its step would need the
    whole frame memory at every step; only the kinds without attention are exported."""
    if model.decoder.memory_dim is not None:
        raise SettingsError(f"ONNX export supports the temporal kinds without attention (mean, lstm, gru); this "
                            f"model's is {model.pool.kind!r}: export it without --onnx and caption with PyTorch")


def export_onnx(model: CaptionModel, out_dir: str | os.PathLike) -> list[str]:
    """Write `encoder.onnx`, `decoder_start.onnx` and `decoder_step.onnx` for `model` into `out_dir`, batch (and
    frame) axes dynamic; their names.

    Raises:
        SettingsError: the model attends over frames (`check_exportable`).
    """
    check_exportable(model)
    out = Path(out_dir)
    was_training = model.training
    model.eval()
    try:
        encoder, start, step = EncoderGraph(model).eval(), StartGraph(model).eval(), StepGraph(model).eval()
        s = model.encoder.preprocessing.crop_size
        frames = torch.zeros(2, model.spec.num_frames, 3, s, s, dtype=torch.uint8)
        with torch.no_grad():
            video = encoder(frames)
            h, c = start(video)
        tokens = torch.full((2,), model.vocab.bos_id, dtype=torch.long)
        _export(encoder, (frames,), out / ENCODER_ONNX, ["frames"], ["video"],
                {"frames": {0: "batch", 1: "frames"}, "video": {0: "batch"}})
        _export(start, (video,), out / START_ONNX, ["video"], ["h", "c"],
                {"video": {0: "batch"}, "h": {1: "batch"}, "c": {1: "batch"}})
        _export(step, (tokens, h, c, video), out / STEP_ONNX, ["tokens", "h", "c", "video"],
                ["logp", "h_out", "c_out"],
                {"tokens": {0: "rows"}, "h": {1: "rows"}, "c": {1: "rows"}, "video": {0: "rows"},
                 "logp": {0: "rows"}, "h_out": {1: "rows"}, "c_out": {1: "rows"}})
    finally:
        model.train(was_training)
    return list(ONNX_FILES)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    """One graph to `path` (atomically) with the TorchScript exporter: it needs no extra package (the dynamo one
    needs onnxscript) and writes one file, weights inside."""
    from captioner.io import atomic_path

    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on deprecations and batch-first LSTMs
        torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
        os.chmod(tmp, 0o644)
