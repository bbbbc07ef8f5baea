"""Preemption: a stop signal ends a training at the next iteration, checkpointed, not mid-step.

SLURM signals a job before its time limit or when it is preempted (SIGTERM; submitit asks for
SIGUSR2, plain ``sbatch --signal`` often SIGUSR1); torchrun passes SIGTERM on to its workers; a
user stops a training with Ctrl-C (SIGINT), a closed terminal sends SIGHUP: all of them stop it
the same way. While :meth:`PreemptionWatch.installed` is active these signals only set a flag.
The training loop asks :meth:`PreemptionWatch.agreed` after every step, so all ranks stop after the same
step; it writes a checkpoint there and raises :class:`Preempted`, which closes the MLflow run
KILLED on its way out. Then the signal is handed on to the handler it displaced: submitit's
requeues the job, which resumes from that checkpoint; without one (or with Python's own Ctrl-C
handler, which would only raise KeyboardInterrupt over the message) the process exits with
status 128 + the signal's number. A second signal does not wait for the step to end.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

import torch
import torch.distributed as dist

from cdrl.distributed import Ranks
from cdrl.tracking import RunTerminated, interruption

#: The signals a scheduler sends before it stops a job, Ctrl-C and a closed terminal's.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")
                     if hasattr(signal, name))


class Preempted(RunTerminated):
    """A training stopped for a scheduler's signal after ``iteration``, its checkpoint (if any) written."""

    def __init__(self, signum: int, iteration: int, checkpoint: str | None):
        super().__init__(signum)
        self.iteration = iteration
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        saved = f"; checkpoint {self.checkpoint}" if self.checkpoint else ""
        return f"stopped by {signal.Signals(self.signum).name} after iteration {self.iteration}{saved}"


class PreemptionWatch:
    """Turns :data:`STOP_SIGNALS` into a request that the training loop answers at the next iteration."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:  # a second signal: the sender insists
            raise interruption(signum)
        self.received = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[PreemptionWatch]:
        """Watch the stop signals for the block (main thread only: elsewhere signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for number in STOP_SIGNALS:
            if signal.getsignal(number) is not signal.SIG_IGN:  # nohup and friends keep ignoring
                self._previous[number] = signal.signal(number, self._handle)
        try:
            yield self
        except Preempted:
            handler = self._previous.get(self.received) if self.received is not None else None
            self._restore()
            if callable(handler) and handler is not signal.default_int_handler:  # e.g. submitit's: requeue, exit
                handler(self.received, None)
            raise
        finally:
            self._restore()

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def agreed(self, ranks: Ranks, device: torch.device) -> int:
        """The stop signal any rank has received (0 for none): every rank calls this after the same step."""
        received = self.received or 0
        if ranks.world_size == 1:
            return received
        value = torch.tensor(received, dtype=torch.int32, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)
