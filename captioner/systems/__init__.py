"""The captioning LightningModule (the sequence module's lives in captioner.sequence)."""
