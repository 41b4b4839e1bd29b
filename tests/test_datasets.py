"""Training batches from `CaptionPairs`: features held in memory give the same batches as files read per item."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from captioner.data.datasets import CaptionPairs, Clip, collate_pairs
from captioner.features.cache import FeatureCache, FeatureSpec
from captioner.data.vocab import Vocabulary


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
