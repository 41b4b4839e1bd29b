"""Captions from an exported folder's ONNX graphs with ONNX Runtime: the networks run there, greedy and beam search
in NumPy with the rules of `captioner.models.decoder` (n-gram blocking, minimum length, never <pad>/<bos>/<unk>)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from captioner.api import VideoCaptioner
from captioner.config import FeatureSpec, GenerationConfig
from captioner.errors import SettingsError
from captioner.export import DOMAIN, ExportError, read_config, read_vocab
from captioner.models.captioner import ScoredCaption
from captioner.models.encoder import Preprocessing
from captioner.onnx_export import ENCODER_ONNX, ONNX_FILES, START_ONNX, STEP_ONNX
from captioner.vocab import Vocabulary

Step = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
NEG_INF = np.float32(-np.inf)


class OnnxCaptioner:
    """An exported folder's captioner on ONNX Runtime (CPU): `OnnxCaptioner(folder).caption(paths)`.

    Video files are read and cropped as `VideoCaptioner` does (its loop over videos, `caption_results`, runs this
    model's `encoder` and `caption_features`); the CNN, temporal encoder and decoder steps run in ONNX Runtime.

    Args:
        folder: written by `captioner export --onnx`.
        threads: ONNX Runtime's intra-op threads (default: its own choice, one per core).

    Raises:
        ExportError: the folder is damaged (see `captioner.export.read_config`) or holds no ONNX graphs.
        SettingsError: onnxruntime is not installed.
    """

    def __init__(self, folder: str | os.PathLike, threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SettingsError("--runtime onnx needs onnxruntime: pip install 'captioner[onnx]'") from None
        folder = Path(folder)
        config = read_config(folder)
        missing = [name for name in ONNX_FILES if name not in config["files"]]
        if missing:
            raise ExportError(f"{folder}: holds no {missing[0]}: export it with `captioner export ... --onnx`")
        self.checkpoint_path = folder
        self.vocab: Vocabulary = read_vocab(folder, config)
        self.spec = FeatureSpec.from_dict(config["feature_spec"])
        self.generation = GenerationConfig(**config["generation"])
        self.preprocessing = Preprocessing(**{k: (tuple(v) if isinstance(v, list) else v)
                                              for k, v in config["backbone"]["preprocessing"].items()})
        self.domain = _domain(folder, config)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its notes on unused initialisers are not the user's business
        session = lambda name: ort.InferenceSession(str(folder / name), options,  # noqa: E731
                                                    providers=["CPUExecutionProvider"])
        self._encoder, self._start, self._step = session(ENCODER_ONNX), session(START_ONNX), session(STEP_ONNX)

    # what `VideoCaptioner`'s loop over videos asks of a model
    caption = VideoCaptioner.caption
    caption_results = VideoCaptioner.caption_results
    read_clip = VideoCaptioner.read_clip
    _read_one = VideoCaptioner._read_one

    @property
    def encoder(self) -> "OnnxCaptioner":
        """The frame side of the model (cropping, `encode_clips`): this object, in the shape of a `FrameEncoder`."""
        return self

    def eval(self) -> "OnnxCaptioner":
        return self

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def encode_clips(self, clips) -> Any:
        """uint8 RGB clips `(T, H, W, 3)` of equal frame count -> video vectors `(B, Dv)` (a torch tensor, for the
        loop): what `caption_features` reads here, in place of per-frame features."""
        import torch

        cropped = np.stack([self.preprocessing.crop(torch.as_tensor(clip)).numpy() for clip in clips])
        return torch.from_numpy(self.encode(cropped))

    def encode_frames(self, frames) -> Any:
        """uint8 RGB frames `(N, H, W, 3)` -> a vector per frame `(N, Dv)`: each frame encoded as a clip of one
        (the graph's frame axis is dynamic), what `--segments scenes --scene-detector cnn` compares for cuts (the
        graph gives no per-frame CNN features)."""
        import torch

        cropped = self.preprocessing.crop(torch.as_tensor(frames)).numpy()  # (N, 3, S, S)
        return torch.from_numpy(self.encode(cropped[:, None]))

    def encode(self, cropped: np.ndarray) -> np.ndarray:
        """Cropped uint8 clips `(B, T, 3, S, S)` -> video vectors `(B, Dv)`."""
        return self._encoder.run(None, {"frames": np.ascontiguousarray(cropped, dtype=np.uint8)})[0]

    def step(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray, video: np.ndarray):
        """One decoder step: words `(N,)`, state `(L, N, H)` x 2, video vectors `(N, Dv)` -> log-probabilities
        `(N, V)`, new state."""
        return tuple(self._step.run(None, {"tokens": tokens.astype(np.int64), "h": h, "c": c, "video": video}))

    def generate(self, video: np.ndarray, generation: Optional[GenerationConfig] = None,
                 **overrides: Any) -> tuple[np.ndarray, np.ndarray]:
        """Video vectors `(B, Dv)` -> token ids `(B, <=max_len)` and mean log-probabilities per word `(B,)`."""
        g = (generation or self.generation).merged(**overrides)
        video = np.ascontiguousarray(video, dtype=np.float32)
        h, c = self._start.run(None, {"video": video})
        if g.beam_size <= 1:
            return greedy_search(self.step, video, h, c, g, self.vocab)
        return beam_search(self.step, video, h, c, g, self.vocab)

    def caption_features(self, video, with_scores: bool = False, generation: Optional[GenerationConfig] = None,
                         **overrides: Any) -> list:
        """Captions for video vectors `(B, Dv)` (`encode_clips`'s); with `with_scores`, `ScoredCaption`s."""
        video = np.asarray(video.cpu() if hasattr(video, "cpu") else video, dtype=np.float32)
        ids, scores = self.generate(video, generation, **overrides)
        texts = [self.vocab.decode(row.tolist()) for row in ids]
        if not with_scores:
            return texts
        if self.domain is None:
            fam, inside = [None] * len(texts), [None] * len(texts)
        else:
            fam = [round(float(f), 4) for f in familiarity(video, self._prototypes)]
            inside = [f >= self.domain.threshold for f in fam]
        return [ScoredCaption(t, round(float(s), 4), f, i) for t, s, f, i in zip(texts, scores, fam, inside)]

    def caption_frames(self, clips, with_scores: bool = False, **overrides: Any) -> list:
        """Captions for clips of uint8 RGB frames `(T, H, W, 3)` (a list, or an array `(B, T, H, W, 3)`)."""
        return self.caption_features(self.encode_clips(list(clips)), with_scores, **overrides)

    @property
    def _prototypes(self) -> np.ndarray:
        return self.domain.prototypes.float().numpy()


def _domain(folder: Path, config: dict):
    """The folder's `DomainSummary` (prototypes read with safetensors' NumPy reader), or `None`."""
    d = config.get("domain")
    if not d or DOMAIN not in config["files"]:
        return None
    import torch
    from safetensors.numpy import load_file

    from captioner.models.familiarity import DomainSummary

    prototypes = torch.from_numpy(load_file(str(folder / DOMAIN))["prototypes"])
    return DomainSummary(prototypes, float(d["threshold"]), float(d.get("quantile", 0.01)), d.get("quantiles_1_5_50"),
                         int(d.get("num_train", 0)), int(d.get("num_held_out", 0)), int(d.get("num_val", 0)))


def familiarity(video: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity of each video vector `(N, D)` to its nearest unit-norm prototype `(K, D)`, in [0, 1]
    (`captioner.models.familiarity.nearest_similarity`, clamped)."""
    v = video / np.maximum(np.linalg.norm(video, axis=1, keepdims=True), 1e-12)
    return np.clip((v @ prototypes.T).max(1), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- the search


def block_repeats(logp: np.ndarray, history: np.ndarray, n: int, spare: int) -> np.ndarray:
    """`captioner.models.decoder.block_repeats` in NumPy: in place, `-inf` in `logp (N, V)` for the words that would
    repeat a word n-gram of `history (N, t)`, say a word a third time in a row, or more than `n` times."""
    num, t = history.shape
    if n <= 0 or t < 2:
        return logp
    last = history[:, -1:]
    banned = [np.where(last == history[:, -2:-1], last, spare)]
    if t >= n:
        if n > 1:
            windows = np.lib.stride_tricks.sliding_window_view(history[:, : t - 1], n - 1, axis=1)  # (N, t-n+1, n-1)
            seen = (windows == history[:, None, t - n + 1 :]).all(-1)
        else:
            seen = np.ones((num, t), dtype=bool)
        banned.append(np.where(seen, history[:, n - 1 :], spare))
        said = (history[:, :, None] == history[:, None, :]).sum(-1)  # (N, t): how often each word was said
        banned.append(np.where(said >= n, history, spare))
    np.put_along_axis(logp, np.concatenate(banned, axis=1), NEG_INF, axis=1)
    return logp


def forbid_eos(logp: np.ndarray, eos: int) -> np.ndarray:
    """`CaptionDecoder.forbid_eos` in NumPy: `<eos>` at -inf in place, unless nothing else is left in the row."""
    kept = logp[:, eos].copy()
    logp[:, eos] = NEG_INF
    stuck = ~np.isfinite(logp).any(1)
    logp[stuck, eos] = kept[stuck]
    return logp


def greedy_search(step: Step, video: np.ndarray, h: np.ndarray, c: np.ndarray, g: GenerationConfig,
                  vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """`CaptionDecoder.greedy` over `step`: ids `(B, <=max_len)` (`<pad>` after `<eos>`), mean log-prob `(B,)`."""
    b = len(video)
    tokens = np.full(b, vocab.bos_id, dtype=np.int64)
    done = np.zeros(b, dtype=bool)
    total, length = np.zeros(b, dtype=np.float32), np.zeros(b, dtype=np.float32)
    out: list[np.ndarray] = []
    for i in range(g.max_len):
        logp, h, c = step(tokens, h, c, video)
        if g.no_repeat_ngram > 0 and out:
            block_repeats(logp, np.stack(out, axis=1), g.no_repeat_ngram, vocab.pad_id)
        if i < g.min_len:
            forbid_eos(logp, vocab.eos_id)
        tokens = logp.argmax(-1)
        best = logp[np.arange(b), tokens]
        tokens = np.where(done, vocab.pad_id, tokens)
        total += np.where(done, np.float32(0), best)
        length += (~done).astype(np.float32)
        out.append(tokens)
        done |= tokens == vocab.eos_id
        if done.all():
            break
    return np.stack(out, axis=1), total / np.maximum(length, 1.0)


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest of each row of `x (n, m)`, largest first: values, indices (as `torch.topk`)."""
    idx = np.argsort(-x, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx


def beam_search(step: Step, video: np.ndarray, h: np.ndarray, c: np.ndarray, g: GenerationConfig,
                vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """`CaptionDecoder.beam_search` over `step`, line for line: each video's search starts from one hypothesis,
    finished hypotheses keep their slot and extend with `<pad>` only, and a video whose best finished hypothesis
    can no longer be overtaken (no length penalty) leaves the batch. Ids `(B, <=max_len)`, mean log-prob `(B,)`."""
    b, k, v = len(video), g.beam_size, len(vocab)
    width = 1
    scores = np.zeros((b, 1), dtype=np.float32)
    tokens = np.full(b, vocab.bos_id, dtype=np.int64)
    done = np.zeros(b, dtype=bool)
    lengths = np.zeros(b, dtype=np.float32)
    history = np.empty((b, 0), dtype=np.int64)
    finished_row = np.full(v, NEG_INF, dtype=np.float32)
    finished_row[vocab.pad_id] = 0.0
    videos = np.arange(b)
    best: list[Optional[np.ndarray]] = [None] * b
    best_score = np.zeros(b, dtype=np.float32)
    for i in range(g.max_len):
        n = len(videos)
        logp, h, c = step(tokens, h, c, video)
        if g.no_repeat_ngram > 0 and i > 0:
            block_repeats(logp, history, g.no_repeat_ngram, vocab.pad_id)
        if i < g.min_len:
            forbid_eos(logp, vocab.eos_id)
        logp = np.where(done[:, None], finished_row, logp)
        cand = (scores.reshape(-1, 1) + logp).reshape(n, width * v)
        few = cand.shape[1] < k
        padded = np.pad(cand, ((0, 0), (0, k - cand.shape[1])), constant_values=NEG_INF) if few else cand
        scores, flat = _topk(padded, k)
        if few:
            flat = np.minimum(flat, cand.shape[1] - 1)
        src = (flat // v + np.arange(n)[:, None] * width).reshape(-1)
        tokens = (flat % v).reshape(-1)
        h, c = h[:, src], c[:, src]
        lengths = lengths[src] + (~done[src]).astype(np.float32)
        done = done[src] | (tokens == vocab.eos_id)
        history = np.concatenate([history[src], tokens[:, None]], axis=1)
        if width == 1:
            video = np.repeat(video, k, axis=0)
            width = k
        over = done.reshape(n, k).all(1)
        if g.length_penalty == 0:
            d = done.reshape(n, k)
            over |= np.where(d, scores, NEG_INF).max(1) >= np.where(d, NEG_INF, scores).max(1)
        if i == g.max_len - 1:
            over[:] = True
        if not over.any():
            continue
        per_word = np.maximum(lengths.reshape(n, k), 1.0)
        ranked = (scores / per_word ** np.float32(g.length_penalty)).argmax(1)
        mean = scores / per_word
        for j in np.flatnonzero(over):
            best[int(videos[j])] = history[j * k + int(ranked[j])]
            best_score[int(videos[j])] = mean[j, int(ranked[j])]
        keep = np.flatnonzero(~over)
        if len(keep) == 0:
            break
        rows = (keep[:, None] * k + np.arange(k)).reshape(-1)
        videos, scores = videos[keep], scores[keep]
        tokens, done, lengths, history = tokens[rows], done[rows], lengths[rows], history[rows]
        h, c, video = h[:, rows], c[:, rows], video[rows]
    longest = max(len(row) for row in best)
    out = np.full((b, longest), vocab.pad_id, dtype=np.int64)
    for j, row in enumerate(best):
        out[j, : len(row)] = row
    width = max(int((out != vocab.pad_id).sum(1).max()), 1)
    return out[:, :width], best_score
