"""Run validation of a checkpoint on N CPU processes and write the metrics as JSON (used by test_ddp.py).

Usage: python ddp_validate.py CHECKPOINT DATAMODULE_ARGS_JSON NUM_PROCESSES OUTPUT_JSON ROOT_DIR
"""

import json
import sys

import pytorch_lightning as pl

from captioner.data.datamodule import CaptioningDataModule
from captioner.systems.captioning import CaptioningSystem

if __name__ == "__main__":
    ckpt, dm_args, n, out, root = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    trainer = pl.Trainer(accelerator="cpu", devices=n, strategy="ddp" if n > 1 else "auto", logger=False,
                         enable_progress_bar=False, default_root_dir=root)
    model = CaptioningSystem.load_from_checkpoint(ckpt, map_location="cpu")
    results = trainer.validate(model, datamodule=CaptioningDataModule(**dm_args), verbose=False)
    if trainer.is_global_zero:
        with open(out, "w") as f:
            json.dump({"world_size": trainer.world_size, **results[0]}, f)
