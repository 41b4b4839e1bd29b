"""Caption normalisation and the word vocabulary (saved inside every checkpoint)."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

_WORD = re.compile(r"\w")
# A word the Treebank rules leave with periods attached (they split only a caption's final one): "runs." before a
# second sentence, "it.." Like coco-caption's PTBTokenizer, keep the period of an abbreviation (one letter, dotted
# letters such as "u.s." or "e.g.", or a common short form: the ones Stanford's tokenizer keeps) and drop the rest.
_DOTTED = re.compile(r"^\.*(.*?\w)\.+$|^\.+(?=[^\W\d_])")
_ABBREVIATED = re.compile(r"^(?:[a-z]|[a-z](?:\.[a-z])+)$")
_CLITICS = frozenset(("'s", "'re", "'ve", "'ll", "'d", "'m", "'em"))
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st mt ft ave jr sr co inc ltd corp vs etc jan feb mar apr jun jul aug sep sept oct nov "
    "dec gen col lt sgt capt gov sen rep rev".split())
# Typographic quotes, apostrophes and dashes as the ASCII ones the Treebank rules know: `doesn’t` is `doesn't`
# (does n't), `“a”` is `"a"`. Applied before NFKC too, which would turn an acute accent used as an apostrophe
# into a space and a combining mark, and after it, which makes primes of a double prime.
_TYPOGRAPHIC = str.maketrans({
    **dict.fromkeys("\u2019\u2018\u201b\u201a\u2032\u2035\u02bc\u02b9\u00b4\u2039\u203a", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb\u301d\u301e", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2212\ufe63", "-"),  # hyphens, en dash, minus: as `-`
    **dict.fromkeys("\u2014\u2015\u2e3a\u2e3b", " -- "),  # em dashes: a break between words, as ASCII `--`
    **dict.fromkeys("\u00ad\u200b\u2060\ufeff", ""),  # soft hyphen, zero-width space and joiner, BOM
})


@functools.cache
def _tokenizer():
    """NLTK's Treebank tokenizer: its rules need no downloaded data (`word_tokenize` needs the punkt model).

    Imported on first use: `import nltk` loads scipy.stats and takes about a second, which captioning, where
    nothing is tokenised, would pay at every start.
    """
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def normalize_text(caption: str) -> str:
    """Unicode NFKC, with typographic quotes, apostrophes and dashes as their ASCII forms; the first step of
    `tokenize`, so training, the vocabulary and the metrics see `doesn’t` and `doesn't` as the same words.

    >>> print(normalize_text("He doesn’t say “hi”—ever"))
    He doesn't say "hi" -- ever
    """
    if caption.isascii():
        return caption
    return unicodedata.normalize("NFKC", caption.translate(_TYPOGRAPHIC)).translate(_TYPOGRAPHIC)


def tokenize(caption: str) -> list[str]:
    """Normalise (`normalize_text`), lowercase and tokenise a caption as coco-caption does: Treebank words, without
    the punctuation tokens (`. , ? ! : ; - -- ... '' `` ( )`, quotes, brackets) and without periods a word keeps
    only where the Treebank rules split none (`runs. It` and `it..`), unless it is an abbreviation (`mr.`, `u.s.`).

    >>> tokenize("A man is riding a horse.")
    ['a', 'man', 'is', 'riding', 'a', 'horse']
    """
    return list(_tokens(caption))


@functools.lru_cache(maxsize=1 << 18)
def _tokens(caption: str) -> tuple[str, ...]:
    """`tokenize`, remembered: a caption is tokenised to build the vocabulary, again to encode it, and references
    again at every validation. The Treebank rules cost about 85 us a caption (17 s for MSR-VTT's 200,000, in
    every process). Tokens are interned, so the remembered captions share one copy of each word."""
    words: list[str] = []
    for tok in _tokenizer().tokenize(normalize_text(caption).lower()):
        if "." in tok:
            if tok == "." and words and _is_abbreviation(words[-1]):  # the rules split the final period off "mr."
                words[-1] += "."
                continue
            tok = _strip_periods(tok)
        if tok[0] == "'":
            tok = _strip_quote(tok)
        if _WORD.search(tok):
            words.append(tok)
    return tuple(sys.intern(tok) for tok in words)


def _strip_periods(token: str) -> str:
    """`runs.` -> `runs`, `it..` -> `it`, `.y` -> `y`; an abbreviation keeps one period: `mr.`, `a.m..` -> `a.m.`.

    Punctuation-only tokens (`.`, `...`) are left for `_tokens` to drop.
    """
    found = _DOTTED.match(token)
    if found is None:
        return token
    if found.group(1) is None:  # leading periods only
        return token[found.end():]
    word = found.group(1)
    return word + "." if _is_abbreviation(word) else word


def _is_abbreviation(word: str) -> bool:
    """A word without its period that keeps one: a letter, dotted letters (`u.s`), or a common short form (`mr`)."""
    return bool(_ABBREVIATED.match(word)) or word in _ABBREVIATIONS


def _strip_quote(token: str) -> str:
    """`'here` (an opening single quote the Treebank rules leave on the word) -> `here`; clitics (`'s`) stay."""
    return token if token in _CLITICS else token.lstrip("'")


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
