import pytest

from captioner.vocab import SPECIALS, Vocabulary, tokenize


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
    from captioner.vocab import _tokens

    first = tokenize("A dog runs after the ball!")
    first.append("changed")
    assert tokenize("A dog runs after the ball!") == ["a", "dog", "runs", "after", "the", "ball"]
    assert _tokens.cache_info().hits >= 1


def test_tokenize_drops_periods_inside_a_caption_as_coco_caption_does():
    """The Treebank rules split only the final period: `runs.` and `it..` became words (and vocabulary entries)."""
    assert tokenize("A dog runs. It is happy.") == ["a", "dog", "runs", "it", "is", "happy"]
    assert tokenize("by it..") == ["by", "it"]
    assert tokenize("a dog.. runs... fast .y") == ["a", "dog", "runs", "fast", "y"]
    assert tokenize("a man is cooking. he adds salt. then stirs.") == ["a", "man", "is", "cooking", "he", "adds",
                                                                       "salt", "then", "stirs"]
    # abbreviations keep their period, as in coco-caption's PTBTokenizer; numbers keep theirs
    assert tokenize("Mr. Smith of the U.S. army, e.g. at 5 p.m.. 3.5 m. tall") == [
        "mr.", "smith", "of", "the", "u.s.", "army", "e.g.", "at", "5", "p.m.", "3.5", "m.", "tall"]
    # quotes: an opening single quote is punctuation, a clitic is a word
    assert tokenize("a \"man\" is 'here' and he's fine") == ["a", "man", "is", "here", "and", "he", "'s", "fine"]
    assert tokenize("'' `` ' -- ; : ( ) [ ] { } ...") == []
    assert tokenize("ask Mr.") == ["ask", "mr."] and tokenize("at 5 p.m.") == ["at", "5", "p.m."]  # final ones too
    vocab = Vocabulary.build(["A dog runs. It is happy.", "by it.."])
    assert not [w for w in vocab.itos if "." in w]


@pytest.mark.parametrize("caption", ["A dog runs. It is happy.", "by it..", "ask Mr. !", "at 5 p.m..", "plan a.",
                                     "the 'quoted' U.S. word.", "St. Louis at 10.", "x .y"])
def test_tokenize_reads_its_own_output_back_the_same(caption):
    """Prepared annotations store `" ".join(tokenize(caption))`, which the vocabulary tokenises again."""
    words = tokenize(caption)
    assert tokenize(" ".join(words)) == words


@pytest.mark.parametrize("typographic, ascii_", [
    ("He doesn’t know", "He doesn't know"),
    ("it´s a dog’s ball", "it's a dog's ball"),
    ("the ‘quoted’ and “double” and „low“ and «angled» words", "the 'quoted' and \"double\" and \"low\" and "
                                                             "\"angled\" words"),
    ("a man—a woman ― and a child", "a man -- a woman -- and a child"),
    ("a half‐time show – 1–2 − 3", "a half-time show - 1-2 - 3"),
    ("ﬁsh in a ＂box＂\u00a0now\u200b", "fish in a \"box\" now"),
])
def test_typographic_quotes_and_dashes_are_the_ascii_words(typographic, ascii_):
    """Curly apostrophes split the vocabulary: `doesn’t` stayed one word while `doesn't` is `does n't`."""
    assert tokenize(typographic) == tokenize(ascii_)
    assert not any(ch in word for word in tokenize(typographic) for ch in "’‘“”—–")


def test_the_vocabulary_has_one_entry_for_both_apostrophes():
    vocab = Vocabulary.build(["a man doesn’t run", "a man doesn't run"])
    assert vocab.itos[4:] == ["a", "does", "man", "n't", "run"]
    assert vocab.encode("A man doesn’t run") == vocab.encode("a man doesn't run")
    assert vocab.unk_id not in vocab.encode("a man doesn´t run")
