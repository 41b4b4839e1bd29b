"""The small sequence tasks (repetition, next letter, parity, counting, first-symbol recall) and their DataModule."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, Optional, Sequence

import torch
from pytorch_lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from captioner.sequence.wordlist import WORDS

if TYPE_CHECKING:
    from captioner.sequence.model import SequenceModel

Task = Literal["repetition", "next_letter", "parity", "count", "first_symbol"]
IGNORE_INDEX = -100  # target value that the loss and accuracy skip (padding)


def repetition_task(
    num: int,
    seq_len: int,
    num_symbols: int,
    generator: Optional[torch.Generator] = None,
    scope: Literal["earlier", "anywhere"] = "earlier",
) -> tuple[Tensor, Tensor]:
    """Random symbol streams, labelled 1 at each step whose symbol has appeared before (many-to-many).

    Args:
        num: Number of sequences.
        seq_len: Steps per sequence.
        num_symbols: Alphabet size.
        generator: Random generator, for reproducible data.
        scope: "earlier": 1 if the symbol appeared earlier; "anywhere": 1 if it appears at any other step,
            which needs the future too (a job for a bidirectional model).

    Returns:
        Inputs (N, T) in [0, num_symbols) and 0/1 targets (N, T).
    """
    inputs = torch.randint(0, num_symbols, (num, seq_len), generator=generator)
    same = inputs[:, :, None] == inputs[:, None, :]  # (N, T, T): same[n, t, s] = x_t == x_s
    if scope == "earlier":
        same = same.tril(-1)  # keep s < t
    elif scope == "anywhere":
        same &= ~torch.eye(seq_len, dtype=torch.bool)
    else:
        raise ValueError(f"scope must be 'earlier' or 'anywhere', got {scope!r}")
    return inputs, same.any(-1).long()  # (N, T, T) -> (N, T)


def parity_task(num: int, seq_len: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Random bit strings, labelled with the parity of their number of ones (many-to-one).

    Returns:
        Bits (N, T) and targets (N,) in {0, 1}; every bit matters, so the answer needs the whole sequence.
    """
    inputs = torch.randint(0, 2, (num, seq_len), generator=generator)
    return inputs, inputs.sum(1) % 2


def count_task(num: int, seq_len: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Random bit strings, labelled with their number of ones (many-to-one, seq_len + 1 classes).

    Returns:
        Bits (N, T) and targets (N,) in [0, T].
    """
    inputs = torch.randint(0, 2, (num, seq_len), generator=generator)
    return inputs, inputs.sum(1)


def first_symbol_task(
    num: int,
    seq_len: int,
    num_symbols: int,
    num_distractors: int,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """Recall the first symbol after seq_len - 1 random distractors (many-to-one, long range).

    The first token is one of `num_symbols` signals; the rest are drawn from `num_distractors` other tokens
    (ids num_symbols..num_symbols + num_distractors - 1). The answer is the first token, so the gradient
    that teaches the model to keep it has to travel back through every step.

    Returns:
        Inputs (N, T) and targets (N,) in [0, num_symbols).
    """
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    inputs = torch.randint(num_symbols, num_symbols + num_distractors, (num, seq_len), generator=generator)
    inputs[:, 0] = torch.randint(0, num_symbols, (num,), generator=generator)
    return inputs, inputs[:, 0].clone()


class CharVocab:
    """Lowercase letters plus padding and end-of-word tokens, for the next-letter task."""

    pad_index = 0
    eos_index = 1
    letters = "abcdefghijklmnopqrstuvwxyz"

    def __len__(self) -> int:
        return len(self.letters) + 2

    def encode(self, word: str) -> list[int]:
        """Token ids of the letters of `word` (no end token)."""
        try:
            return [self.letters.index(ch) + 2 for ch in word]
        except ValueError:
            raise ValueError(f"only lowercase a-z is supported, got {word!r}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Letters for `ids`, stopping at the end token and skipping padding."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_index:
                break
            if i >= 2:
                out.append(self.letters[i - 2])
        return "".join(out)


def next_letter_task(words: Sequence[str], vocab: Optional[CharVocab] = None) -> tuple[Tensor, Tensor]:
    """Each word as letters in, next letters out: "house" -> inputs h o u s e, targets o u s e <eos>.

    Returns:
        Inputs (N, L) padded with `vocab.pad_index` and targets (N, L) padded with IGNORE_INDEX,
        L the longest word's length.
    """
    vocab = vocab or CharVocab()
    max_len = max(len(w) for w in words)
    inputs = torch.full((len(words), max_len), vocab.pad_index, dtype=torch.long)
    targets = torch.full((len(words), max_len), IGNORE_INDEX, dtype=torch.long)
    for i, word in enumerate(words):
        ids = vocab.encode(word)
        inputs[i, : len(ids)] = torch.tensor(ids)
        targets[i, : len(ids)] = torch.tensor(ids[1:] + [vocab.eos_index])
    return inputs, targets


def next_letter_oracle_accuracy(words: Sequence[str]) -> float:
    """Best possible next-letter accuracy on `words`: always guess the commonest continuation of the prefix.

    Many prefixes have several continuations ("ca" -> t, r, n, ...), so even a perfect model of the word
    list cannot reach 100%; this is the ceiling to compare `val/acc` with.
    """
    continuations: dict[str, Counter] = defaultdict(Counter)
    for word in words:
        for k in range(1, len(word) + 1):
            continuations[word[:k]][word[k] if k < len(word) else "<eos>"] += 1
    best = sum(c.most_common(1)[0][1] for c in continuations.values())
    return best / sum(len(w) for w in words)


def _prefix_tokens(model: "SequenceModel", prefix: str, vocab: CharVocab) -> Tensor:
    """`prefix` as a batch of one, (1, P), on the model's device."""
    if not prefix:
        raise ValueError("the model predicts from a prefix of at least one letter")
    return torch.tensor([vocab.encode(prefix)], device=model.head.weight.device)


@torch.no_grad()
def predict_next_letter(model: "SequenceModel", prefix: str, vocab: Optional[CharVocab] = None) -> str:
    """The letter a next-letter model expects after `prefix` ("" if it expects the word to end)."""
    vocab = vocab or CharVocab()
    tokens = _prefix_tokens(model, prefix, vocab)  # (1, P)
    return vocab.decode(model(tokens)[0, -1].argmax(-1, keepdim=True))


@torch.no_grad()
def complete_word(model: "SequenceModel", prefix: str, vocab: Optional[CharVocab] = None, max_len: int = 20) -> str:
    """Greedily extend `prefix` letter by letter until the model predicts the end of the word."""
    vocab = vocab or CharVocab()
    tokens = _prefix_tokens(model, prefix, vocab)  # (1, P)
    out = model.generate(tokens, max_new_tokens=max(max_len - len(prefix), 0), eos_index=vocab.eos_index)
    return vocab.decode(out[0])


def load_words(words_file: Optional[str] = None) -> list[str]:
    """The embedded word list, or one word per line from `words_file` (lowercased, a-z only kept)."""
    if words_file is None:
        return list(WORDS)
    words = [w.strip().lower() for w in Path(words_file).read_text().split()]
    return [w for w in dict.fromkeys(words) if w and w.isascii() and w.isalpha()]


class SequenceDataModule(LightningDataModule):
    """Generates one of the sequence tasks and serves train/val/test splits.

    Synthetic tasks draw each split from its own seed; the next-letter task uses the word list (all of it
    for every split when word_holdout is 0, so that val/test measure how well the list is known).

    Args:
        task: "repetition", "next_letter", "parity", "count" or "first_symbol".
        seq_len: Steps per sequence (not used by next_letter).
        num_symbols: Alphabet size (repetition), or number of classes to recall (first_symbol).
        num_distractors: Distractor tokens for first_symbol.
        repeat_scope: "earlier" or "anywhere" for the repetition task.
        words: Words for next_letter, overriding the embedded list and `words_file`.
        words_file: Whitespace-separated words for next_letter; the embedded list when None.
        word_holdout: Fraction of words kept out of training for next_letter, split between val and test.
        num_train: Training sequences (synthetic tasks).
        num_val: Validation sequences (synthetic tasks).
        num_test: Test sequences (synthetic tasks).
        batch_size: Sequences per batch.
        seed: Seed for the generated data.
        num_workers: DataLoader workers (the data is in memory; 0 is fastest here).
    """

    def __init__(
        self,
        task: Task = "repetition",
        seq_len: int = 20,
        num_symbols: int = 8,
        num_distractors: int = 4,
        repeat_scope: Literal["earlier", "anywhere"] = "earlier",
        words: Optional[list[str]] = None,
        words_file: Optional[str] = None,
        word_holdout: float = 0.0,
        num_train: int = 4096,
        num_val: int = 512,
        num_test: int = 512,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if task not in ("repetition", "next_letter", "parity", "count", "first_symbol"):
            raise ValueError(f"unknown task {task!r}")
        self.save_hyperparameters()
        self.task = task
        self.vocab = CharVocab()
        self.splits: dict[str, TensorDataset] = {}

    @property
    def vocab_size(self) -> int:
        """Number of input tokens the model must embed."""
        hp = self.hparams
        return {
            "repetition": hp.num_symbols,
            "next_letter": len(self.vocab),
            "parity": 2,
            "count": 2,
            "first_symbol": hp.num_symbols + hp.num_distractors,
        }[self.task]

    @property
    def num_classes(self) -> int:
        """Size of the model's output layer."""
        hp = self.hparams
        return {
            "repetition": 2,
            "next_letter": len(self.vocab),
            "parity": 2,
            "count": hp.seq_len + 1,
            "first_symbol": hp.num_symbols,
        }[self.task]

    @property
    def mode(self) -> str:
        """"many_to_many" (a label per step) or "many_to_one" (a label per sequence)."""
        return "many_to_many" if self.task in ("repetition", "next_letter") else "many_to_one"

    @property
    def padding_idx(self) -> Optional[int]:
        """Input padding token, if the task pads."""
        return self.vocab.pad_index if self.task == "next_letter" else None

    def word_splits(self) -> dict[str, list[str]]:
        """Train/val/test word lists for the next-letter task."""
        hp = self.hparams
        words = list(dict.fromkeys(hp.words)) if hp.words else load_words(hp.words_file)
        if hp.word_holdout <= 0:
            return {"train": words, "val": words, "test": words}
        shuffled = words[:]
        random.Random(hp.seed).shuffle(shuffled)
        n_out = max(2, round(hp.word_holdout * len(words)))
        return {"train": shuffled[n_out:], "val": shuffled[: n_out // 2], "test": shuffled[n_out // 2 : n_out]}

    def _generate(self, split: str) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        if self.task == "next_letter":
            return next_letter_task(self.word_splits()[split], self.vocab)
        offset = {"train": 0, "val": 1, "test": 2}[split]
        num = {"train": hp.num_train, "val": hp.num_val, "test": hp.num_test}[split]
        generator = torch.Generator().manual_seed(hp.seed * 1000 + offset)
        if self.task == "repetition":
            return repetition_task(num, hp.seq_len, hp.num_symbols, generator, hp.repeat_scope)
        if self.task == "parity":
            return parity_task(num, hp.seq_len, generator)
        if self.task == "count":
            return count_task(num, hp.seq_len, generator)
        return first_symbol_task(num, hp.seq_len, hp.num_symbols, hp.num_distractors, generator)

    def setup(self, stage: Optional[str] = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.splits:
                self.splits[split] = TensorDataset(*self._generate(split))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
