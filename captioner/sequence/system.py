"""The LightningModule that trains a SequenceModel on the sequence tasks, logging accuracy and gradient norms."""

from __future__ import annotations

import inspect
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

from captioner.callbacks import with_user_checkpoints
from captioner.sequence.model import SequenceModel
from captioner.sequence.tasks import IGNORE_INDEX


class SequenceSystem(LightningModule):
    """Cross-entropy training of a SequenceModel, for per-step (many_to_many) or per-sequence labels.

    Logs `{train,val,test}/loss` and `/acc` (accuracy over non-padding targets), `/seq_acc` for
    many_to_many tasks (every step right), `train/grad_norm` (total L2 norm of the gradients, before
    clipping) and, when the Trainer clips, `train/grad_norm_clipped` (the norm the optimizer is given).

    Args:
        vocab_size: Input tokens; must match the data (`SequenceDataModule.vocab_size`).
        num_classes: Outputs; must match the data (`SequenceDataModule.num_classes`).
        optimizer: "adam" or "sgd" (SGD shows exploding gradients most plainly: no per-weight rescaling).
        lr: Learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        **model_args: The rest of `SequenceModel`'s settings (mode, which must match the data, cell, embed_dim,
            hidden_dim, num_layers, bidirectional, dropout, nonlinearity, gate_init, chrono_max_len,
            recurrent_gain, padding_idx), typed and documented there once. The CLI reads them from that signature
            (`--model.init_args.cell gru`), and the hyperparameters hold all of them, defaults filled in.
    """

    # the settings that shape the weights: a checkpoint resumes only with the same (`captioner.cli.train`)
    ARCHITECTURE = ("vocab_size", "num_classes", "mode", "cell", "embed_dim", "hidden_dim", "num_layers",
                    "bidirectional")

    def __init__(
        self,
        vocab_size: int = 8,
        num_classes: int = 2,
        *,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 3e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        **model_args: Any,
    ) -> None:
        super().__init__()
        self.model = SequenceModel(vocab_size, num_classes, **model_args)
        settings = inspect.signature(SequenceModel).bind(vocab_size, num_classes, **model_args)
        settings.apply_defaults()
        # save_hyperparameters reads this frame's arguments: with the model's defaults filled in, a checkpoint states
        # every setting, as it did when this class retyped them (under the CLI it records the CLI's values instead)
        model_args = {k: v for k, v in settings.arguments.items() if k not in ("vocab_size", "num_classes")}
        self.save_hyperparameters()

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits (B, C) or (B, T, C), see SequenceModel."""
        return self.model(tokens)

    def setup(self, stage: str) -> None:
        # The YAML repeats vocab_size/num_classes/mode for the model; catch a mismatch before training.
        data = getattr(self.trainer, "datamodule", None)  # setup() is only called by a Trainer
        if data is None:
            return
        for name in ("vocab_size", "num_classes", "mode"):
            want, have = getattr(data, name, None), self.hparams[name]
            if want is not None and want != have:
                raise ValueError(f"model.{name}={have!r} but the data needs {want!r}; set it in the config")

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        tokens, targets = batch
        logits = self(tokens)  # (B, C) or (B, T, C)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        valid = targets != IGNORE_INDEX
        correct = (logits.argmax(-1) == targets) & valid
        acc = correct.sum() / valid.sum().clamp(min=1)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        if targets.dim() == 2:  # many_to_many: is every step of the sequence right?
            seq_acc = (correct | ~valid).all(1).float().mean()
            self.log(f"{stage}/seq_acc", seq_acc, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _grad_norm(self) -> Tensor:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return torch.tensor(0.0, device=self.device)
        return torch.nn.utils.get_total_norm(grads, norm_type=2.0)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this before it clips, so this is the raw norm that clipping then bounds.
        self.log("train/grad_norm", self._grad_norm(), on_step=True, on_epoch=False)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_val:
            self.log("train/grad_norm_clipped", self._grad_norm(), on_step=True, on_epoch=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)

    def configure_callbacks(self) -> list:
        best = ModelCheckpoint(monitor="val/acc", mode="max", save_last=True, auto_insert_metric_name=False,
                               filename="epoch{epoch:03d}-acc{val/acc:.4f}")
        return with_user_checkpoints(self._trainer, best)
