"""Preemption: SIGTERM/SIGINT stop the run cleanly after the current optimizer step."""

import os
import signal
import sys

import torch

from ..files import faults


class StopRequest:
    """SIGTERM/SIGINT ask the run to stop after the current optimizer step (checkpoint, clean exit);
    a second signal exits at once. Data-loader workers ignore both (``utils.data.fairface.ignore_stop_signals``)."""

    def __init__(self, after="this step and saving a checkpoint"):
        self.signal = None
        faults.note_stop_signal(False)
        self.after = after  # what the run finishes before it stops, for the message
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:
            sys.stderr.write(f"\nsecond {signal.Signals(signum).name}: exiting now without saving\n")
            os._exit(128 + signum)
        self.signal = signum
        faults.note_stop_signal()  # a save paused by the test hook goes on
        sys.stderr.write(f"\n{signal.Signals(signum).name} received: stopping after {self.after} (send it again "
                         "to exit at once)\n")

    @property
    def name(self):
        return signal.Signals(self.signal).name if self.signal else "a signal to another process"

    def agreed(self, accelerator, all_ranks_here=True):
        """True on every rank if any rank was signalled (all ranks must stop at the same step).

        With several processes the agreement is an all-reduce and a host sync, so the loop asks only at steps
        where every rank asks too (``all_ranks_here``: logging steps, checkpoints, epoch ends) and gets False
        elsewhere; a lone process just reads its flag."""
        if accelerator.num_processes == 1:
            return self.signal is not None
        if not all_ranks_here:
            return False
        flag = torch.tensor([0.0 if self.signal is None else 1.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
