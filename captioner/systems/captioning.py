"""The captioning LightningModule: trains on cached features (cross-entropy or SCST); scores BLEU and CIDEr-D."""

from __future__ import annotations

import math
import random
import warnings
from typing import Literal, Optional

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import OneCycleLR

from captioner.callbacks import (carry_best_record, collect_rng_states, last_checkpoints, set_rng_states,
                                 with_user_checkpoints)
from captioner.checkpointing import CheckpointError, build_model, find_checkpoint, load_model, read_checkpoint
from captioner.config import CONFIG_KEY, GENERATION, CaptionerConfig, TemporalKind
from captioner.errors import SettingsError
from captioner.metrics import CiderD, bleu_scores, cider_d
from captioner.models.captioner import CaptionModel


class BestCheckpoint(ModelCheckpoint):
    """The system's best checkpoint (`save_top_k=1`): the highest monitored score; on a tie, the higher
    `tie_breaker` (another logged score), then the later checkpoint.

    Lightning keeps a new top-k checkpoint only when its score is strictly better, so a short run whose BLEU-4 is 0
    at every epoch kept its first epoch while CIDEr-D rose tenfold. The kept checkpoint's tie-breaker is part of the
    callback's state (saved in every checkpoint), so a resumed run decides as an uninterrupted one; the state key is
    a plain `ModelCheckpoint`'s, so runs saved before resume with their best record.
    """

    def __init__(self, *args, tie_breaker: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.tie_breaker = tie_breaker
        self.best_tie_breaker: Optional[float] = None  # the kept checkpoint's; None: unknown (then a tie replaces it)

    @property
    def state_key(self) -> str:
        key = super().state_key
        return ModelCheckpoint.__qualname__ + key[len(type(self).__qualname__) :]

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Optional[torch.Tensor] = None) -> bool:
        if current is None or self.save_top_k != 1 or not self.best_k_models or torch.isnan(current):
            return super().check_monitor_top_k(trainer, current)
        kept = self.best_k_models[self.kth_best_model_path]
        if float(current) != float(kept):
            return super().check_monitor_top_k(trainer, current)
        now = self._tie_breaker_value(trainer.callback_metrics)
        better = self.best_tie_breaker is None or now is None or now >= self.best_tie_breaker
        return trainer.strategy.reduce_boolean_decision(better)  # every process decides the same

    def _tie_breaker_value(self, metrics: dict) -> Optional[float]:
        value = metrics.get(self.tie_breaker)
        value = None if value is None else float(value)
        return None if value is None or math.isnan(value) else value

    def _update_best_and_save(self, current: torch.Tensor, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        self.best_tie_breaker = self._tie_breaker_value(monitor_candidates)  # before the save, which holds the state
        super()._update_best_and_save(current, trainer, monitor_candidates)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_tie_breaker": self.best_tie_breaker}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:  # Lightning restored the record: this is its
            self.best_tie_breaker = state_dict.get("best_tie_breaker")


class CaptioningSystem(pl.LightningModule):
    """Mean-pooled CNN features -> LSTM decoder, trained with teacher forcing; validated by corpus BLEU.

    The vocabulary, the feature spec and the feature size come from the DataModule at `setup` and are stored
    in the checkpoint's hyperparameters, so one checkpoint file is enough to caption videos later. Scores a dataset
    adds to BLEU and CIDEr-D come from the DataModule's `extra_scores(hypotheses, references, extras)`, if it has one.

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
        no_repeat_ngram: generation never repeats a word n-gram of this size in a caption, nor a word three times
            in a row or more than this many times (0 = off); stored in the checkpoint as a generation default.
        num_samples: captions printed beside their references after testing.
        checkpoint_every_n_steps: also write `last.ckpt` every this many training steps, inside epochs, so a
            killed run loses at most that many steps; `None` writes it at the end of each epoch only.
        monitor: the validation score that picks the best checkpoint, `epoch<N>-bleu4_<score>.ckpt` or
            `epoch<N>-cider_<score>.ckpt` (CIDEr-D).
        init_from: start from the weights and vocabulary of this checkpoint (a `.ckpt` or a run folder: its best
            checkpoint), loaded safely; its architecture (sizes, temporal encoder) replaces the one given here.
            Not a resume: optimizer, schedule and epochs start afresh (self-critical training after cross-entropy).
        scst: train by self-critical sequence training (Rennie et al., 2017) instead of cross-entropy: the CIDEr-D
            of sampled captions against the clip's training references, less a baseline, weighs their
            log-probability. Needs whole clips per training item (`--data.train_items clips`).
        scst_samples: captions sampled per video at each step (K).
        scst_baseline: `mean`: each sample's baseline is the mean reward of the other K - 1 samples of its video
            (the "new self-critical" variant, no extra decoding); `greedy`: the reward of the greedy caption (the
            2017 original).
        vocab, feature_spec, feature_dim: filled from the data at `setup`; leave unset when training.
    """

    def __init__(
        self,
        embed_dim: int = CaptionerConfig.embed_dim,
        hidden_dim: int = CaptionerConfig.hidden_dim,
        num_layers: int = CaptionerConfig.num_layers,
        temporal: TemporalKind = CaptionerConfig.temporal,
        temporal_hidden_dim: int = CaptionerConfig.temporal_hidden_dim,
        dropout: float = CaptionerConfig.dropout,
        lr: float = 2e-3,
        weight_decay: float = 1e-2,
        warmup_fraction: float = 0.05,
        beam_size: int = GENERATION.beam_size,
        max_len: int = GENERATION.max_len,
        length_penalty: float = GENERATION.length_penalty,
        no_repeat_ngram: int = GENERATION.no_repeat_ngram,
        num_samples: int = 8,
        checkpoint_every_n_steps: Optional[int] = None,
        monitor: Literal["val/bleu4", "val/cider"] = "val/bleu4",
        init_from: Optional[str] = None,
        scst: bool = False,
        scst_samples: int = 5,
        scst_baseline: Literal["mean", "greedy"] = "mean",
        vocab: Optional[list[str]] = None,
        feature_spec: Optional[dict] = None,
        feature_dim: Optional[int] = None,
    ):
        super().__init__()
        if scst and scst_samples < (2 if scst_baseline == "mean" else 1):
            raise SettingsError(f"--model.scst_samples {scst_samples}: the mean baseline needs at least 2 samples per "
                                f"video (or use --model.scst_baseline greedy)")
        self.save_hyperparameters()
        self.model = self._build_model() if vocab else None
        self._eval_outputs: list[tuple[int, str, list[str], dict]] = []
        self._rng_states_to_restore: Optional[dict] = None
        self._callback_states: Optional[dict] = None

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        dm = self.trainer.datamodule
        if stage == "fit" and self.hparams.get("scst") and dm.hparams.get("train_items", "pairs") != "clips":
            raise SettingsError("--model.scst true samples captions per clip and scores them against all its "
                                "references: set --data.train_items clips")
        self.hparams.update(vocab=list(dm.vocab.itos), feature_spec=dm.spec.to_dict(), feature_dim=dm.feature_dim)
        if self.hparams.get("init_from"):
            self._init_from(self.hparams.init_from)
            if list(dm.vocab.itos) != self.model.vocab.itos:  # train with the words the weights were trained on
                dm.use_vocabulary(self.model.vocab)
        else:
            self.model = self._build_model()

    def _build_model(self) -> CaptionModel:
        """A new model of these hyperparameters: their architecture, vocabulary, features and generation settings."""
        return build_model(self.hparams, CaptionerConfig.from_hparams(self.hparams))

    # the settings that shape the weights: a checkpoint resumes only with the same (`captioner.cli`), and
    # `init_from` takes the checkpoint's
    ARCHITECTURE = ("embed_dim", "hidden_dim", "num_layers", "temporal", "temporal_hidden_dim")

    def _init_from(self, path: str) -> None:
        """Weights, vocabulary and architecture of the checkpoint `path` (file or run folder), loaded safely."""
        try:
            file = find_checkpoint(path)
            loaded = load_model(read_checkpoint(file), file)
        except CheckpointError as err:
            raise SettingsError(f"--model.init_from {err}") from None
        theirs = {"feature_spec": loaded.spec.to_dict(), "feature_dim": loaded.config.feature_dim}
        for key, value in theirs.items():
            if value != self.hparams.get(key):
                raise SettingsError(f"--model.init_from {file}: trained on other features ({key}: {value} in "
                                    f"the checkpoint, {self.hparams.get(key)} from the data); use its data settings")
        arch = {k: getattr(loaded.config, k) for k in self.ARCHITECTURE}
        changed = [k for k, v in arch.items() if v != self.hparams.get(k)]
        if changed:
            rank_zero_info(f"--model.init_from {file}: its " + ", ".join(f"{k}={arch[k]}" for k in changed) +
                           " replace the settings given")
        self.hparams.update(arch, vocab=list(loaded.vocab.itos))
        self.model = self._build_model()
        self.model.load_state_dict(loaded.state_dict())
        rank_zero_info(f"Initialised from {file}")

    def loss(self, batch: dict) -> torch.Tensor:
        """Teacher-forced cross-entropy of a training batch `{"feats": (B, T, D), "captions": (B, S)}`."""
        return self.model.loss(batch["feats"], batch["captions"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.hparams.get("scst"):
            loss, reward = self.scst_loss(batch)
            self.log("train/reward", reward, prog_bar=True, batch_size=len(batch["feats"]))
        else:
            loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["feats"]))
        return loss

    def scst_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-critical loss of a batch of clips `{"index", "feats": (B, T, D), "references"}`, and the mean reward.

        K captions sampled per video; each one's advantage (its CIDEr-D less the baseline) weighs the
        log-probability of its words: `-sum(advantage * log p(word)) / words`. A sample better than the baseline
        becomes more likely, a worse one less.
        """
        hp = self.hparams
        if "references" not in batch:
            raise SettingsError("--model.scst true samples captions per clip and scores them against all its "
                                "references: set --data.train_items clips")
        k, repeats = hp.scst_samples, hp.get("no_repeat_ngram", GENERATION.no_repeat_ngram)
        encoded = self.model.encode_video(batch["feats"])  # (B, T, D) -> (B, Dv), memory or None
        ids, logp = self.model.sample(encoded, k, hp.max_len, no_repeat_ngram=repeats)  # (B*K, L) x 2
        rewards = self.rewards(ids, batch["index"].repeat_interleave(k)).view(-1, k)  # (B*K,) -> (B, K)
        if hp.scst_baseline == "mean":
            baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)  # the other samples' mean
        else:
            greedy = self.model.greedy(encoded, hp.max_len, no_repeat_ngram=repeats)  # the caption the model gives
            baseline = self.rewards(greedy, batch["index"]).unsqueeze(1)  # (B, 1)
        advantage = (rewards - baseline).view(-1, 1)  # (B*K, 1)
        words = (ids != self.model.vocab.pad_id).sum().clamp_min(1)
        return -(advantage * logp).sum() / words, rewards.mean()

    def rewards(self, ids: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
        """CIDEr-D `(N,)` of captions `ids (N, L)` against the training references of clips `clips (N,)`.

        Document frequencies come from the whole training split, counted once per process on first use (every
        process holds the split: under DDP each scores its own shard against the same statistics).
        """
        if getattr(self, "_train_cider", None) is None:
            self._train_cider = CiderD.of_captions([clip.captions for clip in self.trainer.datamodule.splits["train"]])
        scores = self._train_cider.caption_scores([self.model.vocab.decode(row) for row in ids], clips.tolist())
        return torch.as_tensor(scores, dtype=torch.float32, device=ids.device)

    def _eval_step(self, batch: dict) -> None:
        ids = self.model.generate(batch["feats"]).ids  # with the generation settings of these hyperparameters
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
        scores["cider"] = cider_d(hyps, refs)  # document frequencies from this split's references, as coco-caption
        dm = getattr(self.trainer, "datamodule", None)
        if outputs and hasattr(dm, "extra_scores"):  # the dataset's own (the synthetic set's: order-dependent clips)
            scores.update(dm.extra_scores(hyps, refs, [o[3] for o in outputs]))
        # every process holds the same gathered scores: no further reduction needed, and Lightning's advice to
        # reduce them (sync_dist=True, one warning per metric under DDP, given when it reads them later) does not
        # apply to these metrics
        warnings.filterwarnings("ignore", message=rf"It is recommended to use `self.log\('{split}/.*sync_dist=True")
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
        total, warmup = self._one_cycle_shape()
        sched = OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=total, pct_start=warmup, anneal_strategy="cos")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _one_cycle_shape(self) -> tuple[int, float]:
        """The one-cycle schedule's length in optimizer steps and its warm-up share, for this trainer's run."""
        # OneCycleLR divides by the warm-up's steps less one and by the annealing's steps: the warm-up needs 2
        # steps and the annealing 1, so a run of 1 or 2 steps gets a 3-step schedule of which it uses the start
        total = max(int(self.trainer.estimated_stepping_batches), 3)
        return total, min(max(float(self.hparams.warmup_fraction), 2 / total), 1 - 1 / total)

    def _fit_schedule_to_run(self) -> None:
        """A run resumed with another length (`--trainer.max_epochs`, other data) goes on with the one-cycle
        schedule of its new length, from the step it reached: from there on, learning rate and momentum are those
        of a run started with the new settings. The restored schedule would stop the run at its old length."""
        configs = self.trainer.lr_scheduler_configs
        sched = configs[0].scheduler if configs else None
        if not isinstance(sched, OneCycleLR) or len(sched._schedule_phases) != 2:
            return
        total, warmup = self._one_cycle_shape()
        if sched.total_steps == total or sched.last_epoch >= total:
            return
        rank_zero_info(f"Resumed at optimizer step {sched.last_epoch} of a run now {total} steps long (was "
                       f"{sched.total_steps}): the learning rate follows the one-cycle schedule of {total} steps")
        # the phases OneCycleLR built for the old length (warm-up, then cosine annealing), rebuilt for the new one
        sched.total_steps = total
        sched._schedule_phases[0]["end_step"] = float(warmup * total) - 1
        sched._schedule_phases[1]["end_step"] = total - 1
        sched.last_epoch -= 1
        sched.step()  # the learning rate and momentum of the new schedule at the step reached

    def configure_callbacks(self) -> list[Callback]:
        monitor = self.hparams.get("monitor") or "val/bleu4"
        name = monitor.split("/")[-1]  # the score in the file name, for find_checkpoint: epoch18-cider_1.2345.ckpt
        best = BestCheckpoint(monitor=monitor, tie_breaker="val/bleu4" if monitor == "val/cider" else "val/cider",
                              mode="max", auto_insert_metric_name=False,
                              filename=f"epoch{{epoch:02d}}-{name}_{{{monitor}:.4f}}")
        own = [best, *last_checkpoints(self.hparams.get("checkpoint_every_n_steps"))]
        return with_user_checkpoints(self._trainer, *own)

    # Resuming: Lightning restores weights, optimizer, scheduler and loop counters; the data module restores the
    # position in the epoch and its vocabulary. The random state (dropout) and the model's vocabulary are the
    # system's to restore.

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = collect_rng_states()
        if self.model is not None and self.model.config is not None:
            checkpoint[CONFIG_KEY] = self.model.config.to_dict()  # the architecture, typed (`CaptionerConfig`)
        summary = self._domain_summary()
        if summary is not None:
            checkpoint["domain_summary"] = summary

    @torch.no_grad()
    def _domain_summary(self) -> Optional[dict]:
        """The training videos as prototypes of the vectors the decoder reads, with the in-domain threshold
        calibrated on held-out training videos and the validation split (see `captioner.models.familiarity`),
        for `captioner.api.VideoCaptioner` to tell a user when a video is unlike anything the checkpoint was trained on.

        Computed once per training step that saves (the best and the last checkpoint of an epoch share it), and
        once for good when the video vector is the mean of the frames (it depends on no weight then). Draws no
        global random numbers (a resumed run stays exact). Only the process that writes the file does it.
        """
        from captioner.models.familiarity import DomainSummary

        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.model is None or dm is None or not getattr(dm, "splits", None) or not self.trainer.is_global_zero:
            return None
        key = "fixed" if self.model.video_is_frame_mean else self.global_step  # then no weight changes the vector
        cached = getattr(self, "_summary_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]

        def vectors(split: str) -> Optional[torch.Tensor]:
            clips = dm.splits.get(split) or []
            out = []
            for start in range(0, len(clips), 256):
                feats = torch.stack([dm.cache.load(c.id) for c in clips[start : start + 256]]).to(self.device)
                out.append(self.model.video_vectors(feats).float().cpu())  # (B, T, D) -> (B, Dv)
            return torch.cat(out) if out else None

        train, val = vectors("train"), vectors("val")
        if train is None:
            return None
        summary = DomainSummary.fit(train, val).to_dict()
        self._summary_cache = (key, summary)
        return summary

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # applied at on_train_start: the set-up between loading and training draws random numbers of its own
        self._rng_states_to_restore = checkpoint.get("rng_states")
        self._callback_states = checkpoint.get("callbacks")  # for carry_best_record, at on_train_start too
        # a resumed run saves to a new version folder by design; the best checkpoint's record is carried over
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
        saved = (checkpoint.get("hyper_parameters") or {}).get("vocab")
        if self.model is None or not saved or list(saved) == self.model.vocab.itos:
            return
        # the data gives another vocabulary than the checkpoint's (clips added, removed or left out since):
        # keep the checkpoint's, whose words the weights were trained on, and encode the captions with it
        hp = checkpoint["hyper_parameters"]
        for key in ("feature_spec", "feature_dim"):
            if hp.get(key) != self.hparams.get(key):
                raise ValueError(f"the checkpoint was trained on other features ({key}: {hp.get(key)} in the "
                                 f"checkpoint, {self.hparams.get(key)} from the data)")
        rank_zero_warn(f"the data's vocabulary ({len(self.model.vocab)} words) differs from the checkpoint's "
                       f"({len(saved)} words): resuming with the checkpoint's; unknown words become <unk>")
        self.hparams.update(vocab=list(saved))
        self.model = self._build_model()
        # the data module restores its own vocabulary (its state, which Lightning loads next); one saved before
        # issue 16 has none and takes the model's here
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        dm_state = checkpoint.get(type(dm).__qualname__) if dm is not None else None
        if hasattr(dm, "use_vocabulary") and not (isinstance(dm_state, dict) and dm_state.get("vocab")):
            dm.use_vocabulary(self.model.vocab)

    def on_train_start(self) -> None:
        # after Lightning restored the checkpoint's optimizer, scheduler and loops, before the first training step
        self._fit_schedule_to_run()
        states, self._callback_states = getattr(self, "_callback_states", None), None
        best = self.trainer.checkpoint_callback
        if states and isinstance(best, ModelCheckpoint) and best.monitor and best.state_key in states:
            carry_best_record(best, states[best.state_key])
        if self._rng_states_to_restore is not None:
            set_rng_states(self._rng_states_to_restore)
            self._rng_states_to_restore = None

