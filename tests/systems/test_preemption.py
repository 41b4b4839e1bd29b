"""SIGUSR1 and SIGTERM (SLURM's time-limit warning, preemption): every rank saves one `hpc_ckpt_<n>.ckpt` at a batch
boundary, rank 0 requeues a SLURM job, every process stops by itself; the checkpoint resumes exactly."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_args

TRAIN = Path(__file__).with_name("train_and_kill.py")
# one thread per process: the same float operations in the same order in every run, and two runs fit on 2 cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONWARNINGS": "ignore"}
for _name in [k for k in ENV if k.startswith("SLURM_")]:  # a test run inside a SLURM job: only the test's own
    del ENV[_name]
UNSET_WEIGHTS_ONLY = "`weights_only` was not set"  # Lightning's line for a save that did not say what it keeps


def _losses(metrics_csv: Path) -> dict[int, float]:
    rows = list(csv.DictReader(metrics_csv.open()))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


@contextlib.contextmanager
def lightning_log(name: str):
    """The INFO lines logger `name` emits in the block (Lightning's loggers do not propagate to pytest's caplog)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, handler = logging.getLogger(name), Collect(logging.INFO)
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def own_signal_handlers():
    """The test process's SIGUSR1/SIGTERM handlers, put back after an in-process run stopped by a signal (the
    stopped run leaves its handlers in place, for a process that is about to exit)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.slow
def test_sigusr1_mid_step_saves_once_stops_and_resumes_exactly(tiny_datamodule_args, tmp_path, single_thread,
                                                              monkeypatch, own_signal_handlers, capsys):
    """Outside SLURM: SIGUSR1 (then a burst of SIGUSR1 and SIGTERM) arrives inside a training step; the step ends,
    one hpc_ckpt_1.ckpt is saved, the run stops with status 138 and one line, and resuming from that checkpoint
    trains the same steps with the same losses as a run never interrupted."""
    import pytorch_lightning as pl

    from captioner.cli.train import train_main
    from captioner.systems.captioning import CaptioningSystem

    class SignalAt(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if signal_at is not None and trainer.global_step == signal_at:
                os.kill(os.getpid(), signal.SIGUSR1)  # handled here, in the middle of the step

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if signal_at is not None and trainer.global_step == signal_at:
                for s in [signal.SIGUSR1, signal.SIGTERM] * 5:  # repeated: absorbed, one save
                    os.kill(os.getpid(), s)

    configure, signal_at = CaptioningSystem.configure_callbacks, None
    monkeypatch.setattr(CaptioningSystem, "configure_callbacks", lambda self: [*configure(self), SignalAt()])
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)

    def run(root: Path, *extra: str) -> dict:
        return train_main(tiny_args(tiny_datamodule_args, root, "--trainer.max_epochs=3", "--model.num_samples=0",
                                    "--trainer.log_every_n_steps=1", *extra))

    run(tmp_path / "clean")
    signal_at = 13  # 3 steps into the 2nd epoch
    capsys.readouterr()
    with lightning_log("pytorch_lightning.trainer.connectors.checkpoint_connector") as lines:
        with pytest.raises(SystemExit) as stopped:
            run(tmp_path / "stopped")
    assert stopped.value.code == 128 + signal.SIGUSR1
    hpc = tmp_path / "stopped" / "hpc_ckpt_1.ckpt"
    err = capsys.readouterr().err
    assert f"SIGUSR1: saved {hpc}; stopping (not a SLURM job, nothing requeued; resume with --ckpt_path {hpc})" in err
    assert sorted(p.name for p in hpc.parent.glob("*.ckpt")) == ["hpc_ckpt_1.ckpt"]  # one save, nothing left over
    assert not list(hpc.parent.glob(".*tmp"))
    assert not [line for line in lines if UNSET_WEIGHTS_ONLY in line]  # item 13: the save says what it keeps
    saved = torch.load(hpc, weights_only=True)
    assert saved["global_step"] == 14 and saved["epoch"] == 1  # the step the signal interrupted, completed
    assert saved["CaptioningDataModule"]["train_sampler"] == {"epoch": 1, "samples_seen": 32}

    signal_at = None
    run(tmp_path / "stopped", f"--ckpt_path={hpc}")
    a = _losses(tmp_path / "clean" / "logs" / "version_0" / "metrics.csv")
    b = _losses(tmp_path / "stopped" / "logs" / "version_1" / "metrics.csv")
    assert sorted(b) == list(range(14, 30))
    for step in b:  # the same batches, dropout masks and learning rates after the restart
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step
    a_ckpt = torch.load(tmp_path / "clean" / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    b_ckpt = torch.load(tmp_path / "stopped" / "logs" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a_ckpt["global_step"] == b_ckpt["global_step"] == 30
    for name, weight in a_ckpt["state_dict"].items():
        torch.testing.assert_close(b_ckpt["state_dict"][name], weight, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("hook", ["on_validation_batch_start", "on_test_batch_start"])
def test_a_signal_after_the_last_training_step_stops_before_or_during_the_test(
        hook, tiny_datamodule_args, tmp_path, single_thread, monkeypatch, own_signal_handlers, capsys):
    """During the last validation: training ends, is saved and the run stops before its test. During the test:
    the test stops (nothing to save: training was complete)."""
    import pytorch_lightning as pl

    from captioner.cli.train import train_main
    from captioner.systems.captioning import CaptioningSystem

    class SignalIn(pl.Callback):
        pass

    setattr(SignalIn, hook, lambda self, trainer, *args: None if trainer.sanity_checking
            else os.kill(os.getpid(), signal.SIGTERM))
    configure = CaptioningSystem.configure_callbacks
    monkeypatch.setattr(CaptioningSystem, "configure_callbacks", lambda self: [*configure(self), SignalIn()])
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train_main(tiny_args(tiny_datamodule_args, root, "--trainer.max_epochs=1", "--model.num_samples=0"))
    assert stopped.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert not list(root.rglob("test_metrics.json"))
    if hook == "on_validation_batch_start":
        hpc = root / "hpc_ckpt_1.ckpt"
        assert f"SIGTERM: saved {hpc}; stopping (resume with --ckpt_path {hpc})" in err
        assert torch.load(hpc, weights_only=True)["global_step"] == 10
    else:
        assert not list(root.glob("hpc_ckpt_*"))
        assert ("SIGTERM: training was complete, the test is not finished; stopping (resume with the run's "
                "last.ckpt)") in err


# ----------------------------------------------------------------------------------------------- 2 ranks under SLURM

JOB_ID = "4242"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmJob:
    """`srun` as it starts a 2-task job step on one node: 2 processes with SLURM's variables (Lightning picks its
    SLURMEnvironment), each in its own process group as slurmstepd starts tasks, and a fake `scontrol` on PATH that
    records its arguments."""

    def __init__(self, tmp_path: Path, dm: dict, root: Path, *extra: str, ranks: int = 2):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        scontrol = bin_dir / "scontrol"
        scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
        scontrol.chmod(0o755)
        self.calls, self.root = tmp_path / "scontrol.log", root
        port = _free_port()
        args = tiny_args(dm, root, "--trainer.accelerator=cpu", f"--trainer.devices={ranks}", "--trainer.num_nodes=1",
                         "--trainer.strategy=ddp", "--model.num_samples=0", "--trainer.log_every_n_steps=1", *extra)
        self.procs = []
        for rank in range(ranks):
            env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}", "SCONTROL_LOG": str(self.calls),
                   "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "captioner-test", "SLURM_NTASKS": str(ranks),
                   "SLURM_NTASKS_PER_NODE": str(ranks), "SLURM_JOB_NUM_NODES": "1", "SLURM_NODELIST": "localhost",
                   "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            self.procs.append(subprocess.Popen([sys.executable, str(TRAIN), *args], stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                                               start_new_session=True))

    def signal(self, rank: int, signum: int) -> None:
        """What slurmstepd does: the signal to every process of the task (its DataLoader workers too)."""
        if self.procs[rank].poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[rank].pid, signum)

    def wait_until(self, condition, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                self.fail(f"no {what}")
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> list[str]:
        """Every process's output, once each has exited by itself; a process still running after `timeout` seconds
        fails the test (killed first, so that a hang cannot hang the suite)."""
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs):
            if time.monotonic() > deadline:
                self.fail(f"still running {timeout:.0f} s later (hung)")
            time.sleep(0.05)
        return [p.communicate()[0] for p in self.procs]

    def fail(self, why: str) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        logs = "\n".join(f"--- rank {i} (exit {p.wait()}):\n{p.communicate()[0][-2500:]}" for i, p in enumerate(self.procs))
        pytest.fail(f"{why}\n{logs}")


def _send(job: SlurmJob, schedule: list[tuple[float, int, int]]) -> None:
    """`schedule`: (seconds after the first, rank, signal) for each signal."""
    start = time.monotonic()
    for at, rank, signum in schedule:
        time.sleep(max(0.0, start + at - time.monotonic()))
        job.signal(rank, signum)


def _check_stopped(job: SlurmJob, logs: list[str], signum: int, hpc: Path) -> dict:
    """Every rank exited with 128 + `signum`, cleanly; `hpc` is the one new checkpoint, a whole training state;
    rank 0 alone said so, in one line."""
    for rank, (proc, log) in enumerate(zip(job.procs, logs)):
        assert proc.returncode == 128 + signum, f"rank {rank}:\n{log[-3000:]}"
        assert "Traceback" not in log and UNSET_WEIGHTS_ONLY not in log, f"rank {rank}:\n{log[-3000:]}"
    assert sorted(p.name for p in hpc.parent.iterdir() if p.is_file()) == sorted(
        f"hpc_ckpt_{n}.ckpt" for n in range(1, int(hpc.stem.split("_")[-1]) + 1))  # nothing else: no temporary
    name = signal.Signals(signum).name
    assert [line for line in logs[0].splitlines() if line.startswith(f"{name}: saved ")] == [
        f"{name}: saved {hpc}; stopping (requeued SLURM job {JOB_ID})" if signum == signal.SIGUSR1 else
        f"{name}: saved {hpc}; stopping (resume with --ckpt_path {hpc})"]
    assert f"{name}: saved" not in logs[1]
    saved = torch.load(hpc, weights_only=True)
    assert {"optimizer_states", "lr_schedulers", "loops", "CaptioningDataModule", "rng_states"} <= set(saved)
    return saved


def _global_step(root: Path) -> int:
    """The step of the newest last.ckpt under `root` (-1 for none): how far a run is."""
    files = sorted(root.rglob("last.ckpt"), key=lambda f: f.stat().st_mtime)
    return torch.load(files[-1], weights_only=True, map_location="cpu")["global_step"] if files else -1


UNDER_WAY = ("--trainer.max_epochs=1000", "--model.checkpoint_every_n_steps=2")  # stopped by the test's signals


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [
    # SIGUSR1 to rank 1 only, SIGUSR1 to rank 0 2 s later (the requeue is rank 0's, whoever heard first)
    pytest.param([(0.0, 1, signal.SIGUSR1), (2.0, 0, signal.SIGUSR1)], id="rank0-2s-later"),
    # both ranks at once, then every 0.25 s, 20 times: saving while signals keep coming
    pytest.param([(0.25 * i, rank, signal.SIGUSR1) for i in range(20) for rank in (0, 1)], id="burst-of-20"),
])
def test_sigusr1_to_two_ranks_saves_once_requeues_once_and_stops(schedule, tiny_datamodule_args, tmp_path):
    """SLURM's `--signal=SIGUSR1@90` as the ranks of one job see it: at different moments, or again and again.
    Every process ends by itself (no hang), after one checkpoint and one `scontrol requeue <job id>`."""
    root = tmp_path / "run"
    job = SlurmJob(tmp_path, tiny_datamodule_args, root, *UNDER_WAY)
    job.wait_until(lambda: list(root.rglob("last.ckpt")), "training under way")
    _send(job, schedule)
    logs = job.finish()
    _check_stopped(job, logs, signal.SIGUSR1, root / "hpc_ckpt_1.ckpt")
    assert job.calls.read_text() == f"requeue {JOB_ID}\n"  # once, by rank 0


@pytest.mark.slow
def test_requeued_job_resumes_exactly_from_the_preemption_checkpoint(tiny_datamodule_args, tmp_path):
    """SIGUSR1 to rank 0, to rank 1 0.5 s later: saved, requeued. The requeued job (the same command, no
    --ckpt_path) resumes from hpc_ckpt_1.ckpt by itself and trains the steps an uninterrupted job trains, with the
    same losses, until SIGTERM to rank 0 alone stops both ranks (saved, not requeued)."""
    root, clean_root = tmp_path / "run", tmp_path / "clean"
    (tmp_path / "clean job").mkdir()
    clean = SlurmJob(tmp_path / "clean job", tiny_datamodule_args, clean_root, *UNDER_WAY)
    job = SlurmJob(tmp_path, tiny_datamodule_args, root, *UNDER_WAY)
    job.wait_until(lambda: list(root.rglob("last.ckpt")), "training under way")
    _send(job, [(0.0, 0, signal.SIGUSR1), (0.5, 1, signal.SIGUSR1)])
    first = _check_stopped(job, job.finish(), signal.SIGUSR1, root / "hpc_ckpt_1.ckpt")["global_step"]
    assert job.calls.read_text() == f"requeue {JOB_ID}\n"

    requeued = SlurmJob(tmp_path, tiny_datamodule_args, root, *UNDER_WAY)
    requeued.wait_until(lambda: _global_step(root / "logs" / "version_1") >= first + 4, "resumed training")
    _send(requeued, [(0.0, 0, signal.SIGTERM)])  # preemption (or scancel) reaching one rank first
    logs = requeued.finish()
    assert f"Restoring states from the checkpoint path at {root / 'hpc_ckpt_1.ckpt'}" in logs[0]
    second = _check_stopped(requeued, logs, signal.SIGTERM, root / "hpc_ckpt_2.ckpt")["global_step"]
    assert job.calls.read_text() == f"requeue {JOB_ID}\n"  # SIGTERM does not requeue: it may be scancel

    clean.wait_until(lambda: _global_step(clean_root) >= second, "the uninterrupted job's steps")
    _send(clean, [(0.0, 0, signal.SIGTERM), (0.0, 1, signal.SIGTERM)])
    clean.finish()
    a = _losses(clean_root / "logs" / "version_0" / "metrics.csv")
    b = _losses(root / "logs" / "version_1" / "metrics.csv")
    assert sorted(b) == list(range(first, second - 1))  # the stopped step's loss is not logged: the save comes first
    for step in b:  # the same batches, dropout masks and learning rates after the restart
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def test_requeue_says_in_one_line_when_scontrol_is_missing_or_fails(tmp_path, monkeypatch):
    from captioner.preemption import requeue_slurm_job

    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol here
    said = requeue_slurm_job("4242", "--ckpt_path run/hpc_ckpt_1.ckpt")
    assert said == ("could not requeue SLURM job 4242: scontrol not found; resubmit the job to resume from "
                    "--ckpt_path run/hpc_ckpt_1.ckpt")
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "slurm_requeue error: Invalid job id specified" >&2\nexit 1\n')
    scontrol.chmod(0o755)
    said = requeue_slurm_job("4242", "--ckpt_path run/hpc_ckpt_1.ckpt")
    assert said.startswith("could not requeue SLURM job 4242: scontrol exited with status 1: slurm_requeue error: "
                           "Invalid job id specified; resubmit") and "\n" not in said


def test_a_forked_worker_ignores_the_signal_and_leaves_the_decision_to_the_main_process(own_signal_handlers):
    """DataLoader workers are forked with the handler installed: a job's signal reaches them too, and must neither
    kill them (the run would crash before saving) nor count as the main process's."""
    from types import SimpleNamespace

    from captioner.preemption import PreemptionCheckpoint

    callback = PreemptionCheckpoint()
    callback._pid = os.getpid()
    callback._install(SimpleNamespace())
    pid = os.fork()
    if pid == 0:  # the "worker": signalled, it goes on, then exits 0
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        os._exit(0 if not callback.received else 3)
    assert os.waitpid(pid, 0)[1] == 0  # not killed by either signal, nothing recorded there
    assert callback.received == {}
    os.kill(os.getpid(), signal.SIGUSR1)
    assert callback.received == {signal.SIGUSR1: True}
    callback._restore()
