"""Preemption: on SIGUSR1 or SIGTERM, all ranks save one `hpc_ckpt_<n>.ckpt` at a batch boundary, requeue, stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Optional

import torch
import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Callback

from captioner.callbacks import next_hpc_checkpoint

REQUEUE_TIMEOUT_S = 60  # `scontrol requeue` talks to slurmctld; a stuck controller must not hold the job's grace time


class Preempted(SystemExit):
    """Training stopped after saving its preemption checkpoint; exit status 128 + the signal's number (143 for
    SIGTERM, 138 for SIGUSR1), as a shell reports a process stopped by that signal."""

    def __init__(self, signum: int, checkpoint: Optional[str]):
        super().__init__(128 + signum)
        self.signum, self.checkpoint = signum, checkpoint


class PreemptionCheckpoint(Callback):
    """SIGUSR1 (SLURM's `--signal=SIGUSR1@90`: time is nearly up) and SIGTERM (preemption, `scancel`): save
    `<default_root_dir>/hpc_ckpt_<n>.ckpt` once, requeue the SLURM job on SIGUSR1, and stop every rank.

    Lightning's own handling saves and requeues inside the signal handler (SLURMEnvironment's `auto_requeue`): under
    DDP a rank signalled mid-step enters the checkpoint's collectives while the others are in the gradient all-reduce
    and every rank hangs (Lightning-AI/pytorch-lightning#21406); a second signal during that save re-enters it and
    kills the run; and its SIGTERM handler broadcasts from inside the handler. Here the handler only records the
    signal. At the end of the next training batch (where `ModelCheckpoint` saves too, so the checkpoint resumes
    exactly) all ranks share what they received in one all-reduce and act on it together: the checkpoint is written
    once (atomically, see `AtomicCheckpointIO`), global rank 0 runs `scontrol requeue <job id>` (SIGUSR1 under a
    SLURM job only), and every rank raises `Preempted`. Signals after the first are absorbed; once stopping, further
    SIGUSR1s are ignored for the rest of the process. A signal that arrives after the last training batch (during
    the last validation) is acted on when training ends, so the test is not started.

    Lightning resumes from the newest `hpc_ckpt_<n>.ckpt` of `default_root_dir` on its own when a job starts under
    SLURM without `--ckpt_path`. DataLoader workers (forked, they inherit the handler) ignore these signals: a job's
    signal reaches every process of the step, and a worker that died of it would crash the run before the save.
    """

    def __init__(self) -> None:
        self.received: dict[int, bool] = {}
        self._pid: Optional[int] = None
        self._previous: dict[int, object] = {}
        self._stopping = False

    # ------------------------------------------------------------------------------------------------ the handler

    def _signals(self, trainer) -> tuple[int, int]:
        env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
        requeue = env.requeue_signal if isinstance(env, SLURMEnvironment) and env.requeue_signal else signal.SIGUSR1
        return int(requeue), int(signal.SIGTERM)

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides
            return
        self.received[signum] = True  # nothing else: the training step this interrupts goes on undisturbed

    def _install(self, trainer) -> None:
        for signum in self._signals(trainer):
            if signal.getsignal(signum) != self._handle:
                self._previous.setdefault(signum, signal.getsignal(signum))
                signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    # ------------------------------------------------------------------------------------------------ the hooks

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage not in ("fit", "test") or sys.platform == "win32" or not _in_main_thread():
            return
        env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
        if isinstance(env, SLURMEnvironment):
            env.auto_requeue = False  # this callback requeues, at a batch boundary
        self.received, self._pid, self._stopping = {}, os.getpid(), False
        self._install(trainer)
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and not getattr(connector, "_captioner_preemption", False):
            # Lightning registers its SIGTERM handler (which broadcasts from inside the handler, and stops only the
            # rank it reached) as each stage starts, after this hook: ours stays in its place while installed
            register = connector.register_signal_handlers
            connector.register_signal_handlers = lambda: self._install(trainer) if self._pid == os.getpid() \
                else register()
            connector._captioner_preemption = True

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pid == os.getpid():
            self._install(trainer)  # in case Lightning registered its own after all

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._act(trainer, save=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._act(trainer, save=True)  # a signal during the last validation: training is done, its test is not

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._act(trainer, save=False)  # testing a trained model: nothing to save, the run's checkpoints are there

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, Preempted):
            self._release()  # the process goes on (or reports the error): the signals' usual meaning again

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._release()

    def _release(self) -> None:
        if self._pid == os.getpid():
            self._restore()
            self._pid = None

    # ------------------------------------------------------------------------------------------------ acting

    def _act(self, trainer, save: bool) -> None:
        if self._pid != os.getpid() or self._stopping:
            return
        requeue_sig, term_sig = self._signals(trainer)
        # one collective every batch, whether or not anything arrived: every rank takes the same decision
        flags = torch.tensor([self.received.get(term_sig, False), self.received.get(requeue_sig, False)],
                             dtype=torch.int32, device=trainer.strategy.root_device)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        term, requeue = (bool(v) for v in flags.tolist())
        if not (term or requeue):
            return
        self._stopping = True  # signals from here on are absorbed by the handler; none re-enters this
        signum = requeue_sig if requeue else term_sig
        path = None
        if save:
            path = trainer.strategy.broadcast(next_hpc_checkpoint(trainer.default_root_dir))
            # weights_only=False: a whole training state (left unset, Lightning logs "`weights_only` was not set")
            trainer.save_checkpoint(path, weights_only=False)
        signal.signal(requeue_sig, signal.SIG_IGN)  # stopping now: a late one must not kill the exit
        if trainer.is_global_zero:
            resume = f"--ckpt_path {path}" if path else "the run's last.ckpt"
            job = slurm_job_id() if requeue else None
            if job is not None:
                outcome = requeue_slurm_job(job, resume)
            elif requeue:
                outcome = f"not a SLURM job, nothing requeued; resume with {resume}"
            else:
                outcome = f"resume with {resume}"
            what = f"saved {path}" if path else "training was complete, the test is not finished"
            print(f"{signal.Signals(signum).name}: {what}; stopping ({outcome})", file=sys.stderr, flush=True)
        raise Preempted(signum, path)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def slurm_job_id() -> Optional[str]:
    """The id `scontrol requeue` takes for this SLURM batch job (`<array job>_<task>` in an array), or None outside
    one (no `SLURM_JOB_ID`, or an interactive `salloc`/`srun --pty` session that Lightning does not treat as SLURM)."""
    if "SLURM_JOB_ID" not in os.environ or not SLURMEnvironment.detect():
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array and "SLURM_ARRAY_TASK_ID" in os.environ \
        else os.environ["SLURM_JOB_ID"]
    return job if re.fullmatch(r"[0-9]+(_[0-9]+)?", job) else None


def requeue_slurm_job(job: str, resume: str) -> str:
    """Run `scontrol requeue <job>`; what happened, in a few words for the stop line (`resume`: from what)."""
    resubmit = f"resubmit the job to resume from {resume}"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                              timeout=REQUEUE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return f"could not requeue SLURM job {job}: scontrol not found; {resubmit}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"could not requeue SLURM job {job}: {type(err).__name__}: {err}; {resubmit}"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return (f"could not requeue SLURM job {job}: scontrol exited with status {done.returncode}"
                f"{': ' + said[0][:200] if said else ''}; {resubmit}")
    return f"requeued SLURM job {job}"
