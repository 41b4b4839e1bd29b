from captioner.data.vocab import SPECIALS, Vocabulary, tokenize
import pytest


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Man is riding, a horse!") == ["a", "man", "is", "riding", "a", "horse"]
    assert tokenize("...!?") == []


def test_build_counts_and_min_count():
    vocab = Vocabulary.build(["a red ball", "a blue ball", "a red cube"], min_count=2)
    assert vocab.itos[:4] == list(SPECIALS)
    assert vocab.itos[4:] == ["a", "ball", "red"]  # by count, then alphabetically; 'blue', 'cube' dropped


def test_encode_decode_round_trip_and_unknown_words():
    vocab = Vocabulary.build(["a red ball"])
    ids = vocab.encode("A red DOG.")
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id and ids[3] == vocab.unk_id
    assert vocab.decode(ids) == "a red <unk>"
    assert vocab.decode([vocab.bos_id, vocab.stoi["red"], vocab.eos_id, vocab.stoi["ball"]]) == "red"
    assert len(vocab.encode("a red ball a red ball", max_len=2)) == 4


def test_rejects_malformed_vocabularies():
    with pytest.raises(ValueError):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError):
        Vocabulary(list(SPECIALS) + ["a", "a"])


def test_tokenize_is_remembered_but_hands_out_copies():
    from captioner.data.vocab import _tokens

    first = tokenize("A dog runs after the ball!")
    first.append("changed")
    assert tokenize("A dog runs after the ball!") == ["a", "dog", "runs", "after", "the", "ball"]
    assert _tokens.cache_info().hits >= 1
