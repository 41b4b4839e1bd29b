"""Tests for the sequence-task generators (labels checked independently) and SequenceDataModule."""

import pytest
import torch

from captioner.sequence.tasks import (
    IGNORE_INDEX,
    CharVocab,
    SequenceDataModule,
    count_task,
    first_symbol_task,
    load_words,
    next_letter_oracle_accuracy,
    next_letter_task,
    parity_task,
    repetition_task,
)
from captioner.sequence.wordlist import WORDS


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_repetition_labels_match_a_plain_loop():
    inputs, targets = repetition_task(50, 12, 5, gen())
    assert inputs.shape == targets.shape == (50, 12)
    for seq, labels in zip(inputs.tolist(), targets.tolist()):
        seen = set()
        for symbol, label in zip(seq, labels):
            assert label == int(symbol in seen)
            seen.add(symbol)


def test_repetition_anywhere_labels_use_the_whole_sequence():
    inputs, targets = repetition_task(50, 12, 5, gen(), scope="anywhere")
    for seq, labels in zip(inputs.tolist(), targets.tolist()):
        assert labels == [int(seq.count(s) > 1) for s in seq]


def test_repetition_hand_example():
    # The generator is random, so check the labelling rule on a fixed stream through the same code path.
    stream = torch.tensor([[3, 1, 3, 2, 1, 1]])
    same = stream[:, :, None] == stream[:, None, :]
    assert same.tril(-1).any(-1).long().tolist() == [[0, 0, 1, 0, 1, 1]]
    inputs, _ = repetition_task(1, 6, 4, gen(1))
    assert ((inputs >= 0) & (inputs < 4)).all()


def test_parity_labels():
    inputs, targets = parity_task(200, 9, gen())
    assert set(inputs.unique().tolist()) <= {0, 1}
    assert targets.tolist() == [sum(seq) % 2 for seq in inputs.tolist()]
    assert 0.3 < targets.float().mean() < 0.7


def test_count_labels():
    inputs, targets = count_task(200, 9, gen())
    assert targets.tolist() == [seq.count(1) for seq in inputs.tolist()]
    assert int(targets.min()) >= 0 and int(targets.max()) <= 9


def test_first_symbol_task():
    inputs, targets = first_symbol_task(300, 40, 4, 3, gen())
    assert inputs.shape == (300, 40) and targets.shape == (300,)
    assert targets.tolist() == [seq[0] for seq in inputs.tolist()]
    assert ((targets >= 0) & (targets < 4)).all()
    assert ((inputs[:, 1:] >= 4) & (inputs[:, 1:] < 7)).all()  # distractors never look like an answer
    assert len(targets.unique()) == 4


def test_char_vocab_round_trip():
    vocab = CharVocab()
    assert len(vocab) == 28
    ids = vocab.encode("house")
    assert ids == [ord(c) - ord("a") + 2 for c in "house"]
    assert vocab.decode(ids + [vocab.eos_index, 5, 6]) == "house"
    assert vocab.decode([vocab.pad_index] + ids) == "house"
    with pytest.raises(ValueError):
        vocab.encode("House")


def test_next_letter_inputs_and_targets():
    vocab = CharVocab()
    inputs, targets = next_letter_task(["house", "list", "a"], vocab)
    assert inputs.shape == targets.shape == (3, 5)
    assert vocab.decode(inputs[0]) == "house"
    # each target is the letter after the input letter, and the last is the end of the word
    assert targets[0].tolist() == vocab.encode("ouse") + [vocab.eos_index]
    assert inputs[1].tolist() == vocab.encode("list") + [vocab.pad_index]
    assert targets[1].tolist() == vocab.encode("ist") + [vocab.eos_index, IGNORE_INDEX]
    assert targets[2].tolist() == [vocab.eos_index] + [IGNORE_INDEX] * 4


def test_next_letter_oracle_accuracy_hand_example():
    # "a" -> b or c (one of two right), "ab" -> end, "ac" -> end: 3 of 4 predictions can be right
    assert next_letter_oracle_accuracy(["ab", "ac"]) == pytest.approx(0.75)
    assert next_letter_oracle_accuracy(["house"]) == 1.0


def test_embedded_word_list():
    assert len(WORDS) >= 500 and len(set(WORDS)) == len(WORDS)
    assert all(w.isalpha() and w.islower() and w.isascii() for w in WORDS)
    assert {"house", "list"} <= set(WORDS)


def test_load_words_from_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("Cat\ndog dog\nit's\n\nbird\n")
    assert load_words(str(path)) == ["cat", "dog", "bird"]
    assert load_words() == list(WORDS)


@pytest.mark.parametrize(
    "task, vocab_size, num_classes, mode, target_dims",
    [
        ("repetition", 6, 2, "many_to_many", 2),
        ("parity", 2, 2, "many_to_one", 1),
        ("count", 2, 8, "many_to_one", 1),
        ("first_symbol", 7, 4, "many_to_one", 1),
        ("next_letter", 28, 28, "many_to_many", 2),
    ],
)
def test_datamodule_describes_and_serves_each_task(task, vocab_size, num_classes, mode, target_dims):
    dm = SequenceDataModule(
        task=task, seq_len=7, num_symbols=4 if task == "first_symbol" else 6, num_distractors=3,
        words=["house", "list", "cat"], num_train=40, num_val=10, num_test=12, batch_size=8,
    )  # fmt: skip
    assert (dm.vocab_size, dm.num_classes, dm.mode) == (vocab_size, num_classes, mode)
    dm.setup("fit")
    inputs, targets = next(iter(dm.train_dataloader()))
    assert inputs.dtype == targets.dtype == torch.long
    assert targets.dim() == target_dims
    assert int(inputs.max()) < dm.vocab_size
    valid = targets[targets != IGNORE_INDEX]
    assert int(valid.min()) >= 0 and int(valid.max()) < dm.num_classes
    if task != "next_letter":
        assert len(dm.splits["train"]) == 40 and len(dm.splits["test"]) == 12


def test_datamodule_is_reproducible_and_splits_differ():
    make = lambda seed: SequenceDataModule(task="repetition", num_train=20, num_val=20, seed=seed)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.splits["train"].tensors[0], b.splits["train"].tensors[0])
    assert not torch.equal(a.splits["train"].tensors[0], a.splits["val"].tensors[0])
    assert not torch.equal(a.splits["train"].tensors[0], c.splits["train"].tensors[0])


def test_word_holdout_keeps_splits_disjoint():
    dm = SequenceDataModule(task="next_letter", word_holdout=0.2)
    splits = dm.word_splits()
    assert len(splits["val"]) + len(splits["test"]) == round(0.2 * len(WORDS))
    assert not set(splits["train"]) & (set(splits["val"]) | set(splits["test"]))
    everything = SequenceDataModule(task="next_letter", word_holdout=0.0).word_splits()
    assert everything["train"] == everything["val"] == everything["test"] == list(WORDS)


def test_unknown_task_rejected():
    with pytest.raises(ValueError):
        SequenceDataModule(task="sorting")
