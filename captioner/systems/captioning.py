"""The captioning LightningModule: trains the decoder on cached features, evaluates BLEU over whole splits."""

from __future__ import annotations

import random
from typing import Literal, Optional

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from captioner.data.synthetic import direction_report
from captioner.metrics import bleu_scores
from captioner.models.captioner import build_captioner


class CaptioningSystem(pl.LightningModule):
    """Mean-pooled CNN features -> LSTM decoder, trained with teacher forcing; validated by corpus BLEU.

    The vocabulary, the feature spec and the feature size come from the DataModule at `setup` and are stored
    in the checkpoint's hyperparameters, so one checkpoint file is enough to caption videos later.

    Args:
        embed_dim: word embedding size.
        hidden_dim: LSTM hidden size.
        num_layers: stacked LSTM layers.
        temporal: how frames become the decoder's input: `mean` (classic), `lstm`, `gru`, `attention`,
            `lstm_attention`, `gru_attention` (see `captioner.models.temporal`).
        temporal_hidden_dim: hidden size of the recurrent temporal encoders.
        dropout: decoder dropout.
        lr: AdamW learning rate (peak of the one-cycle schedule).
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the training steps spent warming the learning rate up.
        beam_size: beam width at validation/test (1 = greedy).
        max_len: longest generated caption, in words.
        length_penalty: beam ranking divides log p by length ** length_penalty.
        num_samples: captions printed beside their references after testing.
        vocab, feature_spec, feature_dim: filled from the data at `setup`; leave unset when training.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        num_layers: int = 1,
        temporal: Literal["mean", "lstm", "gru", "attention", "lstm_attention", "gru_attention"] = "mean",
        temporal_hidden_dim: int = 512,
        dropout: float = 0.3,
        lr: float = 2e-3,
        weight_decay: float = 1e-2,
        warmup_fraction: float = 0.05,
        beam_size: int = 5,
        max_len: int = 20,
        length_penalty: float = 0.0,
        num_samples: int = 8,
        vocab: Optional[list[str]] = None,
        feature_spec: Optional[dict] = None,
        feature_dim: Optional[int] = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_captioner(self.hparams) if vocab else None
        self._eval_outputs: list[tuple[int, str, list[str], dict]] = []

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        dm = self.trainer.datamodule
        self.hparams.update(vocab=list(dm.vocab.itos), feature_spec=dm.spec.to_dict(), feature_dim=dm.feature_dim)
        self.model = build_captioner(self.hparams)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video, memory = self.model.pool.encode(batch["feats"])  # (B, T, D) -> (B, Dv), memory or None
        loss = self.model.decoder.loss(video, batch["captions"], memory)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(video))
        return loss

    def _eval_step(self, batch: dict) -> None:
        hp = self.hparams
        ids = self.model.generate(batch["feats"], hp.beam_size, hp.max_len, hp.length_penalty)
        hyps = [self.model.vocab.decode(row) for row in ids]
        self._eval_outputs += list(zip(batch["index"].tolist(), hyps, batch["references"], batch["extra"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def _gathered_outputs(self) -> list[tuple[int, str, list[str], dict]]:
        """Every process's (clip index, hypothesis, references, extra), de-duplicated and sorted by clip."""
        outputs, self._eval_outputs = self._eval_outputs, []
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, outputs)
            outputs = [o for part in parts for o in part]
        # a DistributedSampler repeats clips to even out the processes: count each clip once
        return [o for _, o in sorted({o[0]: o for o in outputs}.items())]

    def _log_bleu(self, split: str) -> list[tuple[int, str, list[str], dict]]:
        outputs = self._gathered_outputs()
        hyps, refs = [o[1] for o in outputs], [o[2] for o in outputs]
        scores = bleu_scores(hyps, refs)
        if outputs and all("motion" in o[3] for o in outputs):  # the synthetic set: report order-dependent clips
            scores.update(direction_report(hyps, refs, [o[3]["motion"] for o in outputs]))
        # every process holds the same gathered scores: no further reduction needed
        self.log_dict({f"{split}/{k}": v for k, v in scores.items()}, prog_bar=split == "val", rank_zero_only=False,
                      sync_dist=False)
        return outputs

    def on_validation_epoch_end(self) -> None:
        self._log_bleu("val")

    def on_test_epoch_end(self) -> None:
        outputs = self._log_bleu("test")
        if self.trainer.is_global_zero and self.hparams.num_samples > 0 and outputs:
            rng = random.Random(0)
            print("\nSample test captions:")
            for _, hyp, refs, _ in rng.sample(outputs, min(self.hparams.num_samples, len(outputs))):
                print(f"  generated: {hyp}\n  reference: {refs[0]}\n")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=max(int(total), 1),
                                                    pct_start=self.hparams.warmup_fraction, anneal_strategy="cos")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self) -> list[Callback]:
        best = ModelCheckpoint(monitor="val/bleu4", mode="max", save_last=True, auto_insert_metric_name=False,
                               filename="epoch{epoch:02d}-bleu4_{val/bleu4:.4f}")
        return [best]
