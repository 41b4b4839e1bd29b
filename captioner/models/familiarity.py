"""How familiar a video is to a checkpoint: cosine similarity of its pooled video vector to prototypes of the
training videos, with an in-domain threshold calibrated on held-out training videos and the validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

MAX_SUMMARY_BYTES = 2_000_000  # the prototypes' share of a checkpoint, even for MSR-VTT's 6,513 training clips
MAX_PROTOTYPES = 512
CALIBRATION_FOLDS = 5  # training videos are held out a fifth at a time from the prototypes they are scored against
MIN_HELD_OUT = 500  # held-out training videos enough for a 1st percentile (5 below it); more folds cost a fit each


def nearest_similarity(vectors: torch.Tensor, prototypes: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Cosine similarity of each vector `(N, D)` to its nearest unit-norm prototype `(K, D)` -> `(N,)` in [-1, 1]."""
    v = F.normalize(vectors.float(), dim=-1)
    p = prototypes.to(v.device, torch.float32)
    return torch.cat([(part @ p.T).max(1).values for part in v.split(chunk)]) if len(v) else v.new_zeros(0)


def spherical_kmeans(vectors: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """`k` unit-norm prototypes `(k, D)` of `vectors (N, D)` (spherical k-means, k-means++ start).

    Draws from a generator of its own: a checkpoint save in the middle of training leaves the global random state
    untouched, so a resumed run still draws what an uninterrupted one does. With `k >= N` every vector is its own
    prototype.
    """
    x = F.normalize(vectors.float(), dim=-1)
    n = len(x)
    if k >= n:
        return x.clone()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # k-means++: each new centre drawn with probability growing with its distance to the nearest centre so far
    centres = [x[int(torch.randint(n, (1,), generator=gen))]]
    closest = 1 - x @ centres[0]  # cosine distance (N,)
    for _ in range(1, k):
        weights = closest.clamp_min(0).cpu()
        if weights.sum() > 0:
            i = int(torch.multinomial(weights, 1, generator=gen))
        else:  # every vector already is a centre (duplicates): any one
            i = int(torch.randint(n, (1,), generator=gen))
        centres.append(x[i])
        closest = torch.minimum(closest, 1 - x @ x[i])
    c = torch.stack(centres)  # (k, D)
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)  # (N,)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        empty = sums.norm(dim=1) == 0
        new = torch.where(empty.unsqueeze(1), c, F.normalize(sums, dim=-1))
        if torch.allclose(new, c):
            break
        c = new
    return c


@dataclass
class DomainSummary:
    """The training videos as prototypes in the decoder's input space, and the in-domain threshold.

    Attributes:
        prototypes: unit-norm prototypes `(K, D)` (float16 in a checkpoint).
        threshold: a video whose familiarity is at or above it is in domain: the `quantile` (1st percentile) of
            the calibration familiarities, lowered by its distance to their 5th percentile. A 1st percentile
            estimated from a few dozen clips is itself noisy (50 synthetic clips: the test split's came out 0.011
            lower), and a held-out clip of the training distribution wrongly flagged costs more trust than an odd
            one let through; out-of-domain videos lie far below (docs/trust.md).
        quantile: which quantile of the calibration familiarities `threshold` is.
        val_quantiles: the calibration familiarities' 1st, 5th, 50th percentiles (for the record; the name is
            the one older checkpoints store).
        num_train: training videos summarised.
        num_held_out: training videos scored against prototypes fitted without them (cross-validation).
        num_val: validation videos scored against the final prototypes.
    """

    prototypes: torch.Tensor
    threshold: float
    quantile: float = 0.01
    val_quantiles: Optional[list] = None
    num_train: int = 0
    num_held_out: int = 0
    num_val: int = 0

    @property
    def num_calibration(self) -> int:
        """How many videos the threshold rests on (0: a checkpoint from before it was recorded)."""
        return self.num_held_out + self.num_val

    @classmethod
    def fit(cls, train: torch.Tensor, val: Optional[torch.Tensor] = None, quantile: float = 0.01,
            max_bytes: int = MAX_SUMMARY_BYTES, max_prototypes: int = MAX_PROTOTYPES,
            folds: int = CALIBRATION_FOLDS, min_held_out: int = MIN_HELD_OUT, seed: int = 0) -> "DomainSummary":
        """Summarise training video vectors `(N, D)`; calibrate the threshold on held-out training vectors and
        validation vectors `(M, D)`.

        A validation split of a few clips alone gives a threshold as noisy as its few scores (4 clips: a training
        source video's clips fell below it), so training vectors are held out too: split into `folds` (a seeded
        permutation), each fold is scored against prototypes fitted on the other folds, fold after fold until
        `min_held_out` vectors are scored (or all are); the final prototypes are fitted on every training vector.
        A held-out vector meets prototypes of a fifth fewer videos than a new video will: if anything the
        threshold comes out a little low, the side that flags fewer of the training distribution's videos.
        Draws from generators of its own (the global random state is untouched).
        """
        k = max(1, min(max_prototypes, max_bytes // (2 * train.shape[1])))
        prototypes = spherical_kmeans(train, k, seed=seed).half()  # as stored: the threshold fits what users get
        scores = []
        n = len(train)
        if n >= 2 and folds >= 2:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            for held in order.tensor_split(min(folds, n)):
                kept = torch.ones(n, dtype=torch.bool)
                kept[held] = False
                scores.append(nearest_similarity(train[held], spherical_kmeans(train[kept], k, seed=seed).half()))
                if sum(len(s) for s in scores) >= min_held_out:
                    break
        num_held_out = sum(len(s) for s in scores)
        num_val = len(val) if val is not None else 0
        if num_val:
            scores.append(nearest_similarity(val, prototypes))
        ref = torch.cat(scores) if scores else nearest_similarity(train, prototypes)  # one video: its own score
        qs = torch.quantile(ref, torch.tensor([quantile, 0.05, 0.5], dtype=ref.dtype)).tolist()
        threshold = max(0.0, qs[0] - max(0.0, qs[1] - qs[0]))
        return cls(prototypes, round(threshold, 4), quantile, [round(q, 4) for q in qs], n, num_held_out, num_val)

    def familiarity(self, vectors: torch.Tensor) -> torch.Tensor:
        """Video vectors `(N, D)` -> familiarity `(N,)` in [0, 1]: cosine similarity to the nearest prototype."""
        return nearest_similarity(vectors, self.prototypes).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        # the prototypes are a (K, D) tensor of hundreds of thousands of numbers: say their shape
        k, d = self.prototypes.shape
        basis = f" from {self.num_calibration} clips" if self.num_calibration else ""
        return f"DomainSummary({k} prototypes of {d}, threshold {self.threshold:.3f}{basis})"

    def to_dict(self) -> dict:
        """Plain values and one tensor: loads under `torch.load(weights_only=True)`."""
        return {"prototypes": self.prototypes.detach().cpu().half(), "threshold": self.threshold,
                "quantile": self.quantile, "val_quantiles": self.val_quantiles, "num_train": self.num_train,
                "num_held_out": self.num_held_out, "num_val": self.num_val}

    @classmethod
    def from_dict(cls, d: dict) -> "DomainSummary":
        return cls(d["prototypes"], float(d["threshold"]), float(d.get("quantile", 0.01)), d.get("val_quantiles"),
                   int(d.get("num_train", 0)), int(d.get("num_held_out", 0)), int(d.get("num_val", 0)))
