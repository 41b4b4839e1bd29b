"""Caption normalisation and the word vocabulary (saved inside every checkpoint)."""

from __future__ import annotations

import functools
import re
import sys
from collections import Counter
from typing import Iterable, Sequence

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

_WORD = re.compile(r"\w")


@functools.cache
def _tokenizer():
    """NLTK's Treebank tokenizer: its rules need no downloaded data (`word_tokenize` needs the punkt model).

    Imported on first use: `import nltk` loads scipy.stats and takes about a second, which captioning, where
    nothing is tokenised, would pay at every start.
    """
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def tokenize(caption: str) -> list[str]:
    """Lowercase and tokenise a caption, dropping punctuation-only tokens.

    >>> tokenize("A man is riding a horse.")
    ['a', 'man', 'is', 'riding', 'a', 'horse']
    """
    return list(_tokens(caption))


@functools.lru_cache(maxsize=1 << 18)
def _tokens(caption: str) -> tuple[str, ...]:
    """`tokenize`, remembered: a caption is tokenised to build the vocabulary, again to encode it, and references
    again at every validation. The Treebank rules cost about 85 us a caption (17 s for MSR-VTT's 200,000, in
    every process). Tokens are interned, so the remembered captions share one copy of each word."""
    return tuple(sys.intern(tok) for tok in _tokenizer().tokenize(caption.lower()) if _WORD.search(tok))


class Vocabulary:
    """Maps words to ids and back; ids 0..3 are `<pad> <bos> <eos> <unk>`."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary must not repeat words")
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Build from raw captions, keeping words seen at least `min_count` times (sorted by count, then word)."""
        counts = Counter(tok for cap in captions for tok in _tokens(cap))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """Caption -> `[<bos>, w1, ..., wn, <eos>]` ids, truncating the words to `max_len`."""
        words = _tokens(caption)[:max_len] if max_len else _tokens(caption)
        return [self.bos_id] + [self.stoi.get(w, self.unk_id) for w in words] + [self.eos_id]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Ids -> text, stopping at `<eos>` and skipping `<bos>`/`<pad>`."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.itos[i])
        return " ".join(words)
