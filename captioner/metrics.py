"""Caption metrics: corpus BLEU-1..4 with NLTK over all references of each clip."""

from __future__ import annotations

import warnings
from typing import Sequence

from nltk.translate.bleu_score import corpus_bleu

from captioner.data.vocab import tokenize

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
