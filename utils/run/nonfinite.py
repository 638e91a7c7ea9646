"""The optimizer step of a run that meets non-finite losses and gradients: the same decision on every rank,
and a correct one under fp16's grad scaler.

``step`` clips, decides, and steps. A step is finite when the loss and the (all-reduced) gradient norm are
finite on *every* rank: the flags are all-reduced, so the ranks' streaks of non-finite steps never drift apart
and no rank enters the checkpoint-and-stop path (a collective) alone. With a grad scaler (fp16 on a GPU):

* an overflow the scaler finds (an inf gradient norm after unscaling) is a non-finite step too, so
  ``--max_nonfinite_steps`` also fires under fp16 (a streak of overflows is a run whose scale cannot recover)
  and the logged window means never take an inf norm;
* ``scaler.update()`` runs after every step whose gradients were unscaled (by ``clip_grad_norm_``), skipped or
  not: without it the next ``clip_grad_norm_`` raises "unscale_() has already been called on this optimizer
  since the last update()", and the scale would never back off.

``MicroBatchLoss`` makes the step's loss the mean over its gradient-accumulation micro-batches, not the last one.
"""

import os

import torch


def agreed_finite(accelerator, *values):
    """True on every rank iff every value is finite on every rank (one small all-reduce with several ranks)."""
    flags = torch.stack([torch.isfinite(torch.as_tensor(v, device=accelerator.device)).all() for v in values])
    finite = flags.all().float().reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    return bool(finite.item() == 1.0)  # the step's one host sync


def step(accelerator, optimizer, parameters, max_grad_norm, loss):
    """Clip, then step the optimizer if the step is finite everywhere. Returns (grad norm, finite); a step that
    is not finite (or that the grad scaler skipped) changed no weight. The caller steps LR schedule and EMAs only
    when finite."""
    grad_norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)  # unscales first, under a grad scaler
    finite = agreed_finite(accelerator, loss, grad_norm)
    if finite:
        optimizer.step()  # with a scaler: scaler.step + scaler.update
        finite = not optimizer.step_was_skipped
    elif accelerator.scaler is not None:
        accelerator.scaler.update()  # the unscaled step must be closed: backs the scale off on an overflow
    return grad_norm, finite


class MicroBatchLoss:
    """The mean loss of an optimizer step's micro-batches, summed on the device (no host sync)."""

    def __init__(self):
        self.total, self.count = None, 0

    def add(self, loss):
        loss = loss.detach().float()
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def take(self):
        """The mean since the last ``take``; starts the next step."""
        mean, self.total, self.count = self.total / self.count, None, 0
        return mean


def plant_cpu_grad_scaler(accelerator):
    """Test hook (tests/test_field_faults.py): ``FAIRFACE_TEST_CPU_GRAD_SCALER=INIT_SCALE`` with
    ``--mixed_precision fp16`` gives a CPU run fp16 autocast and a ``torch.amp.GradScaler``, as a GPU run has,
    so the grad-scaler path runs on a CPU. Call before ``accelerator.prepare``."""
    scale = os.environ.get("FAIRFACE_TEST_CPU_GRAD_SCALER")
    if scale and accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=float(scale))
        accelerator.native_amp = True
