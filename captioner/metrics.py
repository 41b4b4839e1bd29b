"""Caption metrics over all references of each clip: corpus BLEU-1..4 (NLTK) and CIDEr-D (coco-caption's)."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Optional, Sequence

from nltk.translate.bleu_score import corpus_bleu

from captioner.vocab import tokenize

if TYPE_CHECKING:
    import numpy as np

BLEU_WEIGHTS = {
    "bleu1": (1.0, 0, 0, 0),
    "bleu2": (0.5, 0.5, 0, 0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3, 0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def bleu_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (NLTK `corpus_bleu`, no smoothing) of one hypothesis per clip against all its references.

    Both sides are tokenised like the vocabulary (lowercase, punctuation dropped).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
    if not hypotheses:
        return {k: 0.0 for k in BLEU_WEIGHTS}
    hyps = [tokenize(h) for h in hypotheses]
    refs = [[tokenize(r) for r in rs] for rs in references]
    with warnings.catch_warnings():
        # NLTK warns when an n-gram order has no match; the score is then 0, which is what we report
        warnings.filterwarnings("ignore", message=r"(?s).*counts of .*-gram overlaps", category=UserWarning)
        return {k: float(corpus_bleu(refs, hyps, weights=w)) for k, w in BLEU_WEIGHTS.items()}


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D of one hypothesis per clip against all its references, document frequencies from these
    references (coco-caption's `Cider`). Both sides are tokenised like the vocabulary, as for `bleu_scores`."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
    if not hypotheses:
        return 0.0
    return float(CiderD.of_captions(references).caption_scores(hypotheses).mean())


class CiderD:
    """CIDEr-D (Vedantam et al., 2015) as coco-caption's `Cider` computes it, with the references' n-grams cooked once.

    A hypothesis scores `10 * mean_n mean_refs sum_g min(h_g, r_g) r_g / (|h| |r|) * exp(-delta^2 / (2 sigma^2))`
    over tf-idf vectors of its n-grams (n = 1..4), idf from the document frequencies of the reference sets given
    here (a validation split, or the training split once for self-critical rewards), and `delta` the difference of
    lengths. coco-caption's quirks are kept so the scores equal its own: the length is the number of bigrams (one less
    than the words), and an n-gram no reference set holds gets the idf `log(len(references))`.

    The reference vectors do not change between calls, so scoring a hypothesis costs one pass over its own n-grams
    per reference (dictionary look-ups), not a recount of the corpus: what makes per-step rewards affordable.

    Args:
        references: per clip, its reference captions as space-separated tokens (already tokenised).
        n: longest n-gram.
        sigma: width of the Gaussian length penalty.
    """

    def __init__(self, references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        cooked = [[_ngrams(r.split(), n) for r in refs] for refs in references]
        self.document_frequency: Counter = Counter(g for refs in cooked for g in set().union(*refs))
        self.log_num_docs = math.log(float(len(references))) if references else 0.0
        self.references = [[self._vector(c) for c in refs] for refs in cooked]

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        """n-gram counts -> per order its tf-idf weights, their norm, and the caption's length (its bigrams)."""
        vec: list[dict] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (self.log_num_docs - math.log(max(1.0, self.document_frequency.get(gram, 0.0))))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:  # coco-caption counts bigrams as the length (its `if n == 1`, n being the order less one)
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    @classmethod
    def of_captions(cls, references: Sequence[Sequence[str]]) -> "CiderD":
        """A scorer for raw captions, tokenised like the vocabulary (as `bleu_scores` does)."""
        return cls([[_tokens(r) for r in refs] for refs in references])

    def caption_scores(self, captions: Sequence[str], clips: Optional[Sequence[int]] = None) -> "np.ndarray":
        """`scores` of raw captions, tokenised like the references of `of_captions`."""
        return self.scores([_tokens(c) for c in captions], clips)

    def score(self, hypothesis: str, clip: int) -> float:
        """CIDEr-D of one tokenised hypothesis against the references of clip number `clip`."""
        vec, norm, length = self._vector(_ngrams(hypothesis.split(), self.n))
        refs = self.references[clip]
        total = 0.0
        for rvec, rnorm, rlength in refs:
            penalty = math.exp(-((length - rlength) ** 2) / (2 * self.sigma**2))
            for k in range(self.n):
                r = rvec[k]
                val = sum(min(w, r[g]) * r[g] for g, w in vec[k].items() if g in r)  # clipped: min(h, r) r
                if norm[k] != 0 and rnorm[k] != 0:
                    val /= norm[k] * rnorm[k]
                total += val * penalty
        return total / self.n / len(refs) * 10.0

    def scores(self, hypotheses: Sequence[str], clips: Optional[Sequence[int]] = None) -> "np.ndarray":
        """CIDEr-D of each tokenised hypothesis against the references of `clips[i]` (default: clip `i`)."""
        import numpy as np

        clips = range(len(hypotheses)) if clips is None else clips
        return np.array([self.score(h, int(c)) for h, c in zip(hypotheses, clips)], dtype=np.float64)


def _tokens(caption: str) -> str:
    """A caption as the space-separated tokens of the vocabulary's tokenizer (lowercase, no punctuation)."""
    return " ".join(tokenize(caption))


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))
