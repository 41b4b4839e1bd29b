"""`captioner train` for the kill/resume tests, with a SIGKILL to itself mid-run (env KILL_AT_STEP).

The process kills itself at the start of training step KILL_AT_STEP + 1 (after the checkpoints of step
KILL_AT_STEP are written), as a node failure or an out-of-memory kill would: no handler, no clean-up.
"""

import os
import signal
import sys

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            print(f"KILLING at global step {trainer.global_step}, epoch {trainer.current_epoch}, batch {batch_idx}",
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if os.environ.get("KILL_AT_STEP"):
        from captioner.systems.captioning import CaptioningSystem

        configure, step = CaptioningSystem.configure_callbacks, int(os.environ["KILL_AT_STEP"])
        CaptioningSystem.configure_callbacks = lambda self: [*configure(self), KillAtStep(step)]
    from captioner.cli.train import train_main

    train_main(sys.argv[1:])
