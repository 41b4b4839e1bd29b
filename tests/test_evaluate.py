"""`captioner evaluate`: predictions and metrics of a checkpoint; the project's BLEU cross-checked with coco-caption's."""

import json
import random
import shutil

import pytest

from captioner import evaluate as ev
from captioner.cli.evaluate import main as evaluate_main
from captioner.data.synthetic import MOTIONS, SceneObject, make_captions
from captioner.metrics import bleu_scores

needs_coco = pytest.mark.skipif(not ev._coco_available(), reason="pycocoevalcap is not installed")
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """`captioner evaluate` on the trained checkpoint's test split, every metric on (METEOR when Java is here)."""
    _, _, best = trained
    out = tmp_path_factory.mktemp("eval")
    assert evaluate_main(["--checkpoint", str(best), "--split", "test", "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "predictions.json").read_text())


def test_predictions_file(evaluated, tiny_dataset):
    report, predictions = evaluated
    ann = {v["id"]: v for v in json.loads((tiny_dataset / "annotations.json").read_text())["videos"]}
    test_ids = [k for k, v in ann.items() if v["split"] == "test"]
    assert [p["video"] for p in predictions] == test_ids
    assert all(p["references"] == ann[p["video"]]["captions"] and isinstance(p["caption"], str) for p in predictions)
    assert report["num_clips"] == 4 and report["features_from_cache"] == 4 and report["skipped"] == []


def test_metrics_match_training_and_name_what_is_missing(evaluated, trained):
    report, _ = evaluated
    test_metrics, _, _ = trained
    # same checkpoint, features, beam settings and scorer as the test run that closed training
    assert report["generation"] == {"beam_size": 2, "max_len": 20, "length_penalty": 0.0, "no_repeat_ngram": 3,
                                    "min_len": 1}
    for k in ("bleu1", "bleu2", "bleu3", "bleu4"):
        assert report["metrics"][k] == pytest.approx(test_metrics[f"test/{k}"], abs=1e-6)
    assert "SPICE" in report["unavailable"]["spice"] and "offline" in report["unavailable"]["spice"]
    if ev._coco_available():
        assert {"rouge_l", "cider", "coco_bleu4"} <= set(report["metrics"])
        if shutil.which("java"):
            assert 0.0 <= report["metrics"]["meteor"] <= 1.0
        else:
            assert "Java" in report["unavailable"]["meteor"]


def test_features_computed_from_video_when_not_cached(trained, evaluated, tmp_path, monkeypatch):
    _, _, best = trained
    report = ev.evaluate(best, "test", features_dir=str(tmp_path / "empty"), out_dir=tmp_path / "out", meteor=False,
                         progress=False)
    assert report["features_from_video"] == 4 and report["features_from_cache"] == 0
    cached = {p["video"]: p["caption"] for p in evaluated[1]}
    fresh = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {p["video"]: p["caption"] for p in fresh} == cached
    # the one loop over videos runs it (no second read-encode-caption loop), with the overrides merged once
    from captioner.api import VideoCaptioner

    calls = []
    loop = VideoCaptioner.caption_results
    monkeypatch.setattr(VideoCaptioner, "caption_results",
                        lambda self, *a, **k: calls.append(k["generation"]) or loop(self, *a, **k))
    report = ev.evaluate(best, "test", out_dir=tmp_path / "again", beam_size=1, meteor=False, progress=False)
    assert [g.beam_size for g in calls] == [1] and report["generation"]["beam_size"] == 1
    assert report["features_from_cache"] == 4


def test_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    assert evaluate_main(["--checkpoint", str(bad)]) == 2
    assert "not a loadable checkpoint" in capsys.readouterr().err


def test_a_folder_above_several_runs_is_refused(trained, tmp_path, capsys):
    import shutil

    _, root, _ = trained
    runs = tmp_path / "runs"
    for name in ("msvd", "synthetic"):  # two datasets' runs: their BLEU scores are not comparable
        shutil.copytree(root / "logs", runs / name / "logs", ignore=shutil.ignore_patterns("tensorboard", "eval-*"))
    assert evaluate_main(["--checkpoint", str(runs), "--split", "test", "--no-progress", "--no-meteor"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the checkpoints of 2 runs" in err
    assert f"({runs / 'msvd'}, {runs / 'synthetic'})" in err


def test_without_pycocoevalcap_bleu_still_reported(monkeypatch):
    monkeypatch.setattr(ev, "_coco_available", lambda: False)
    scores, unavailable = ev.coco_scores(["a cat sits"], [["a cat sits down"]])
    assert scores == {} and "pycocoevalcap is not installed" in unavailable["meteor"]
    assert "cider" in unavailable and "spice" in unavailable


@needs_coco
def test_without_java_meteor_says_why_and_the_rest_is_scored(monkeypatch):
    monkeypatch.setattr(ev.shutil, "which", lambda name: None)
    scores, unavailable = ev.coco_scores(["a cat sits on a mat", ""], [["a cat sits on the mat"], ["a dog runs"]])
    assert "java" in unavailable["meteor"].lower()
    assert {"coco_bleu4", "rouge_l", "cider"} <= set(scores) and "meteor" not in scores
    with pytest.raises(RuntimeError, match="Java"):
        ev.tokenize_for_coco({0: ["a cat"]}, "ptb")


@needs_coco
@needs_java
def test_ptb_tokenizer_agrees_with_the_vocabulary_tokenizer():
    captions = {0: ["A man, is playing a guitar.", "Someone's cooking -- fast!", "I can't, won't."],
                1: ["The cat (a tabby) sleeps..."]}
    ptb, ours = ev.tokenize_for_coco(captions, "ptb"), ev.tokenize_for_coco(captions, "project")
    assert ptb[0] == ours[0] == ["a man is playing a guitar", "someone 's cooking fast", "i ca n't wo n't"]
    # coco-caption's quirk: it lowercases -LRB-/-RRB- before its punctuation filter, so they stay
    assert ptb[1] == ["the cat -lrb- a tabby -rrb- sleeps"] and ours[1] == ["the cat a tabby sleeps"]


def _synthetic_corpus(n: int = 60, seed: int = 0):
    """Hypotheses and references in the style of the synthetic set (one paraphrase against the others)."""
    rng = random.Random(seed)
    hyps, refs = [], []
    for _ in range(n):
        objs = [SceneObject(rng.choice(["red", "blue", "green"]), rng.choice(["circle", "square"]),
                            rng.choice(["small", "big"]))]
        caps = make_captions(objs, rng.choice(MOTIONS), rng)
        other = make_captions(objs, rng.choice(MOTIONS), rng)  # some hypotheses are wrong
        hyps.append(other[0] if rng.random() < 0.3 else caps[0])
        refs.append(caps[1:])
    return hyps, refs


@needs_coco
def test_bleu_agrees_with_coco_caption_on_full_captions():
    hyps, refs = _synthetic_corpus()
    ours, (coco, _) = bleu_scores(hyps, refs), ev.coco_scores(hyps, refs, meteor=False)
    assert 0.2 < ours["bleu4"] < 0.95  # a non-trivial corpus
    for n in range(1, 5):
        assert ours[f"bleu{n}"] == pytest.approx(coco[f"coco_bleu{n}"], abs=1e-6)


@needs_coco
def test_bleu_differs_from_coco_caption_only_by_nltks_one_ngram_minimum():
    """Short and empty hypotheses: NLTK counts at least one n-gram per hypothesis, coco-caption zero."""
    from captioner.vocab import tokenize

    hyps, refs = _synthetic_corpus()
    hyps[:6] = ["", "a circle", "a red circle", "", "blue", "the square moves"]
    ours, (coco, _) = bleu_scores(hyps, refs), ev.coco_scores(hyps, refs, meteor=False)
    lengths = [len(tokenize(h)) for h in hyps]
    for big_n in range(1, 5):
        factor = 1.0
        for n in range(1, big_n + 1):
            total = sum(max(0, length - n + 1) for length in lengths)  # coco-caption's n-gram count
            short = sum(length < n for length in lengths)  # hypotheses NLTK counts as one n-gram more
            factor *= (total / (total + short)) ** (1 / big_n)
        assert ours[f"bleu{big_n}"] < coco[f"coco_bleu{big_n}"]
        assert ours[f"bleu{big_n}"] == pytest.approx(coco[f"coco_bleu{big_n}"] * factor, abs=1e-6)
        assert coco[f"coco_bleu{big_n}"] - ours[f"bleu{big_n}"] < 0.05  # "slightly", on this corpus


def test_a_run_folder_evaluates_its_best_checkpoint(trained, evaluated, tmp_path, capsys):
    _, root, best = trained
    assert evaluate_main(["--checkpoint", str(root), "--split", "test", "--out", str(tmp_path), "--no-progress",
                    "--no-meteor"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"checkpoint: {best}"
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["checkpoint"] == str(best) and report["metrics"]["bleu4"] == evaluated[0]["metrics"]["bleu4"]


def _noise_dataset(root, seed: int = 0):
    """A dataset of 4 test clips of noise: another dataset, unlike the synthetic training videos."""
    import numpy as np

    from captioner.data.synthetic import write_mp4

    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(4):
        write_mp4(rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), root / f"noise{i}.mp4")
        videos.append({"id": f"noise{i}", "path": f"noise{i}.mp4", "split": "test", "captions": ["a red ball moves"]})
    (root / "annotations.json").write_text(json.dumps({"videos": videos}))
    return root


@pytest.fixture
def run_copy(trained, tmp_path):
    """The trained checkpoint alone in a fresh run folder: default output folders are made beside it."""
    best = trained[2]
    copy = tmp_path / "run" / best.name
    copy.parent.mkdir()
    shutil.copy(best, copy)
    return copy


@pytest.mark.slow
def test_another_datasets_evaluation_never_replaces_the_checkpoints_own(run_copy, tiny_dataset, tmp_path, capsys):
    flags = ["--checkpoint", str(run_copy), "--split", "test", "--no-progress", "--no-meteor"]
    noisy = _noise_dataset(tmp_path / "a" / "noisy")
    assert evaluate_main(flags) == 0
    assert evaluate_main([*flags, "--data-dir", str(noisy)]) == 0
    run = run_copy.parent
    own = json.loads((run / "eval-test" / "predictions.json").read_text())
    other = json.loads((run / "eval-noisy-test" / "predictions.json").read_text())
    assert [p["video"] for p in own] == _test_ids(tiny_dataset)
    assert [p["video"] for p in other] == [f"noise{i}" for i in range(4)]
    assert json.loads((run / "eval-noisy-test" / "metrics.json").read_text())["data_dir"] == str(noisy)
    # another dataset of the same folder name: a folder of its own; a rerun replaces only itself
    same_name = _noise_dataset(tmp_path / "b" / "noisy", seed=1)
    assert evaluate_main([*flags, "--data-dir", str(same_name)]) == 0
    assert evaluate_main(flags) == 0
    assert sorted(p.name for p in run.glob("eval-*")) == ["eval-noisy-test", "eval-noisy-test-2", "eval-test"]
    assert json.loads((run / "eval-noisy-test-2" / "metrics.json").read_text())["data_dir"] == str(same_name)
    assert "held another evaluation" not in capsys.readouterr().err  # nothing was replaced so far
    # an explicit --out holding another evaluation: replaced, and said so
    assert evaluate_main([*flags, "--out", str(run / "eval-test"), "--data-dir", str(noisy)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run / 'eval-test'} held another evaluation ({run_copy} on " in err
    assert json.loads((run / "eval-test" / "metrics.json").read_text())["replaced"]["checkpoint"] == str(run_copy)


def _test_ids(dataset) -> list[str]:
    return [v["id"] for v in json.loads((dataset / "annotations.json").read_text())["videos"] if v["split"] == "test"]


@pytest.mark.slow
def test_the_console_says_how_many_clips_are_in_domain_and_warns_when_most_are_not(run_copy, tmp_path, capsys):
    flags = ["--checkpoint", str(run_copy), "--split", "test", "--no-progress", "--no-meteor"]
    assert evaluate_main(flags) == 0
    out, err = capsys.readouterr()
    assert "in domain: 4 of 4 clips (100 %)" in out.splitlines() and "unlike" not in err
    noisy = _noise_dataset(tmp_path / "noisy")
    assert evaluate_main([*flags, "--data-dir", str(noisy)]) == 0
    out, err = capsys.readouterr()
    assert "in domain: 0 of 4 clips (0 %)" in out.splitlines()
    assert f"warning: 4 of 4 clips of {noisy} are unlike this checkpoint's training videos (" in err
    assert "unreliable" in err and err.count("\n") == 1
    report = json.loads((run_copy.parent / "eval-noisy-test" / "metrics.json").read_text())
    assert report["in_domain_clips"] == 0 and report["in_domain"] == 0.0
