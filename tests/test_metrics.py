"""Caption metrics: CIDEr-D against coco-caption's own implementation, and its shape as a reward."""

import pytest

from captioner.metrics import CiderD, cider_d

# fixed, already tokenised captions (coco-caption's scorer splits on spaces, as ours)
REFERENCES = [
    ["a red circle is growing", "a red circle gets bigger", "the red circle becomes larger"],
    ["a blue square moves left", "a blue square is moving to the left", "the square slides left"],
    ["a green triangle moves right", "a triangle is moving right", "the green triangle slides to the right"],
    ["a yellow circle shrinks", "a small yellow circle is shrinking", "the yellow circle gets smaller"],
    ["two squares move apart", "a red square and a blue square move away from each other"],
]
HYPOTHESES = ["a red circle is growing bigger", "a blue square moves", "a green square moves left",
              "shrinks", "two squares move apart apart apart and a square"]


def test_cider_d_equals_coco_captions_cider():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    gts = {i: refs for i, refs in enumerate(REFERENCES)}
    res = {i: [h] for i, h in enumerate(HYPOTHESES)}
    coco_mean, coco_each = Cider().compute_score(gts, res)
    ours = CiderD(REFERENCES).scores(HYPOTHESES)
    assert ours.tolist() == pytest.approx(coco_each.tolist(), abs=1e-6)
    assert cider_d(HYPOTHESES, REFERENCES) == pytest.approx(coco_mean, abs=1e-6)
    assert 0 < coco_mean  # a test that could fail: some n-grams match


def test_cider_d_tokenises_like_bleu_and_checks_lengths():
    assert cider_d(["A red circle, growing!"], [["a red circle growing"]]) == cider_d(
        ["a red circle growing"], [["a red circle growing"]])
    assert cider_d([], []) == 0.0
    with pytest.raises(ValueError, match="2 hypotheses for 1 reference sets"):
        cider_d(["a", "b"], [["a"]])


def test_a_caption_equal_to_its_references_scores_highest():
    scorer = CiderD(REFERENCES)
    refs = REFERENCES[1]
    same = scorer.scores([refs[0]], [1])[0]
    assert same > scorer.scores(["a blue square moves"], [1])[0] > scorer.scores(["a red circle grows"], [1])[0] >= 0
    assert scorer.scores(["the square slides left"] * 2, [1, 0]).tolist()[0] > 0 == scorer.scores(["xyz"], [0])[0]


def test_metrics_read_typographic_quotes_as_the_ascii_ones():
    """A model trained on `doesn't` (does n't) is not marked down against a reference that writes `doesn’t`."""
    from captioner.metrics import bleu_scores

    hyps, curly, straight = ["a man doesn't like the dog"], [["a man doesn’t like the dog"]], [
        ["a man doesn't like the dog"]]
    assert bleu_scores(hyps, curly) == bleu_scores(hyps, straight) and bleu_scores(hyps, curly)["bleu4"] == 1.0
    assert cider_d(hyps * 2, curly + straight) == pytest.approx(cider_d(hyps * 2, straight * 2))
    assert CiderD.of_captions(curly).caption_scores(["a “man” doesn’t like the dog—"])[0] == pytest.approx(
        CiderD.of_captions(straight).caption_scores(hyps)[0])
