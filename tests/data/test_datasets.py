"""Annotation files (a malformed one is one clear line; empty and long captions reported) and CaptionPairs batches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from badinputs import SPEC
from torch.utils.data import DataLoader

from captioner.config import FeatureSpec
from captioner.data.datasets import CaptionPairs, Clip, collate_pairs, load_annotations
from captioner.features.cache import FeatureCache
from captioner.vocab import Vocabulary


def test_in_memory_batches_equal_per_item_batches(tmp_path):
    cache = FeatureCache(tmp_path, FeatureSpec(num_frames=3))
    clips = [Clip(f"c{i}", f"c{i}.mp4", "train", [f"a red ball number {i}", "a ball", "the red ball moves left"][: i + 1])
             for i in range(3)]
    torch.manual_seed(0)
    for c in clips:
        cache.save(c.id, torch.randn(3, 5))
    vocab = Vocabulary.build(cap for c in clips for cap in c.captions)
    per_item = CaptionPairs(clips, cache, vocab, in_memory=False)
    in_memory = CaptionPairs(clips, cache, vocab, in_memory=True)
    assert len(per_item) == len(in_memory) == 6
    order = [5, 0, 3, 1]
    for ds in (per_item, in_memory):  # what the DataLoader asks: a whole batch of indices at once
        loader = DataLoader(ds, batch_size=4, sampler=order, collate_fn=collate_pairs)
        batch = next(iter(loader))
        expected = collate_pairs([ds[i] for i in order])
        assert batch["feats"].dtype == torch.float32 and batch["feats"].shape == (4, 3, 5)
        assert torch.equal(batch["feats"], expected["feats"]) and torch.equal(batch["captions"], expected["captions"])
    a, b = (next(iter(DataLoader(ds, batch_size=4, sampler=order, collate_fn=collate_pairs)))
            for ds in (per_item, in_memory))
    assert torch.equal(a["feats"], b["feats"]) and torch.equal(a["captions"], b["captions"])
    assert torch.equal(a["feats"][1], cache.load("c0"))  # pair 0 is clip c0's only caption
    assert a["captions"][1].tolist()[: len(vocab.encode("a red ball number 0"))] == vocab.encode("a red ball number 0")
    assert in_memory.load_features().shape == (3, 3, 5)  # each clip's file read once, however many captions


# Annotation files


def _annotations(tmp_path: Path, videos) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"videos": videos}), encoding="utf-8")
    return path


def _video(vid="a", captions=("a man runs",), **extra) -> dict:
    return {"id": vid, "path": f"videos/{vid}.mp4", "split": "train", "captions": list(captions), **extra}


@pytest.mark.parametrize("content, message", [
    ('{"videos": [', "not valid JSON (Expecting value: line 1 column 13"),
    ("[1, 2]", "expected an object with a 'videos' list"),
    ('{"videos": ["clip.mp4"]}', "video #0 is a str, expected an object"),
    ('{"videos": [{"id": "a", "split": "train"}]}', "video #0 lacks path, captions"),
    ('{"videos": [{"id": "a", "path": "a.mp4", "split": "dev", "captions": ["x"]}]}', "has split 'dev'"),
    ('{"videos": [{"id": "a", "path": "a.mp4", "split": "train", "captions": "a man runs"}]}',
     "expected a list of strings"),
    ('{"videos": [{"id": "a", "path": "a.mp4", "split": "train", "captions": [["nested"]]}]}',
     "expected a list of strings"),
    ('{"videos": [{"id": "", "path": "a.mp4", "split": "train", "captions": ["x"]}]}', "video #0 has id ''"),
    ('{"videos": [{"id": "a\\nb", "path": "a.mp4", "split": "train", "captions": ["x"]}]}', "on one line"),
    ('{"videos": [{"id": "a", "path": null, "split": "train", "captions": ["x"]}]}', "has path None"),
])
def test_malformed_annotations_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "annotations.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_annotations(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_duplicate_ids_and_non_utf8_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"videos #0 and #2 share the id 'a'"):
        load_annotations(_annotations(tmp_path, [_video("a"), _video("b"), _video("a")]))
    path = tmp_path / "latin1.json"
    path.write_bytes('{"videos": [{"id": "café"}]}'.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text"):
        load_annotations(path)


def test_empty_and_punctuation_captions_are_skipped_and_reported(tmp_path, caplog):
    path = _annotations(tmp_path, [
        _video("a", ["a man runs", "", "  ", "?!..."]),
        _video("b", ["...", ""]),  # nothing usable left: the clip is left out
        _video("c", ["a cat sleeps."]),
    ])
    with caplog.at_level(logging.WARNING, logger="captioner"):
        clips = load_annotations(path)
    assert [(c.id, c.captions) for c in clips] == [("a", ["a man runs"]), ("c", ["a cat sleeps."])]
    text = caplog.text
    assert "5 captions with no word are left out (first: 'a' #1: '')" in text
    assert "1 clips with no usable caption are left out: b" in text


def test_extremely_long_captions_are_cut_and_reported(tmp_path, caplog):
    from captioner.data.datamodule import CaptioningDataModule

    long = " ".join(["word"] * 5000)
    vocab = Vocabulary.build(["a man runs", long])
    clips = load_annotations(_annotations(tmp_path, [_video("a", ["a man runs", long])]))
    pairs = CaptionPairs(clips, FeatureCache(tmp_path, SPEC), vocab, max_len=20)
    lengths = [len(ids) for _, ids in pairs.pairs]
    assert lengths == [5, 22] and pairs.pairs[1][1][-1] == vocab.eos_id and pairs.truncated == 1
    assert pairs.pairs[1][1] == vocab.encode(long, 20)
    dm = CaptioningDataModule(data_dir=str(tmp_path), synthetic=False, features_dir=str(tmp_path), max_caption_len=20)
    dm.splits, dm.vocab = {"train": clips}, vocab
    with caplog.at_level(logging.WARNING, logger="captioner"):
        dm.train_dataloader()
    assert "1 of 2 training captions are longer than max_caption_len=20 words" in caplog.text
