"""Training-step metrics kept on the device and read every ``--logging_steps``: no per-step host sync for logs.

On a GPU, ``loss.item()`` or ``float(grad_norm)`` after every step makes the CPU wait for the step to finish
before it may queue the next one. Summing the values on the device and reading the sums once per logging
window costs one sync per window instead; the logged numbers are window means. With several processes the
window's sums are averaged over them first (one small all-reduce per window, on every rank at the same
steps), so the logged loss is that of the whole global batch, not rank 0's share of it.

The training step keeps one host sync: whether the gradient is finite. Skipping a non-finite step's
optimizer, LR and EMA steps (and counting a streak of them) needs that answer on the host before the next
step; it is one small read per step, where these metrics were two.
"""

import torch


class StepMetrics:
    """Sums of loss and gradient norm over the updates since the last ``read``, on the training device."""

    def __init__(self, device):
        self.sums = torch.zeros(2, device=device)
        self.updates = 0

    def add(self, loss, grad_norm, counted=True):
        """One optimizer step; ``counted=False`` (a skipped non-finite step) leaves the window's means alone."""
        if not counted:
            return
        grad_norm = torch.as_tensor(grad_norm, device=self.sums.device)  # a float for some accelerate backends
        self.sums += torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        self.updates += 1

    def read(self, accelerator=None):
        """{"loss", "grad_norm"}: means over the window (NaN for a window without updates) and, given the
        ``accelerator`` of several processes, over them (every rank must call it then); starts a new window."""
        sums = self.sums
        if accelerator is not None and accelerator.num_processes > 1:  # ranks skip the same steps: same counts
            sums = accelerator.reduce(sums.clone(), reduction="mean")
        loss_sum, grad_norm_sum = sums.tolist()  # the window's one host sync
        updates, self.updates = self.updates, 0
        self.sums.zero_()
        if not updates:
            return {"loss": float("nan"), "grad_norm": float("nan")}
        return {"loss": loss_sum / updates, "grad_norm": grad_norm_sum / updates}

    def report(self, accelerator, progress, lr, step):
        """Log the window's means and the learning rate to the trackers and the progress bar."""
        logs = {**self.read(accelerator), "lr": lr}
        progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
        accelerator.log(logs, step=step)
        return logs


# accelerate trackers whose log_images takes one image per key (the others take a list, TensorBoard an array).
ONE_IMAGE_PER_KEY = ("aim", "clearml")


def log_images(accelerator, images, step, tag="samples"):
    """Sample images to every tracker that takes images, through accelerate's own ``log_images`` (TensorBoard,
    W&B, Aim, ClearML, SwanLab); trackers without one (MLflow, Comet, ...) get the PNGs in --output_dir only."""
    import numpy as np

    arrays = [np.asarray(image) for image in images]
    for tracker in accelerator.trackers:
        if not callable(getattr(tracker, "log_images", None)):
            continue
        if tracker.name == "tensorboard":
            tracker.log_images({tag: np.stack(arrays)}, step=step, dataformats="NHWC")
        elif tracker.name in ONE_IMAGE_PER_KEY:
            for i, array in enumerate(arrays):
                tracker.log_images({f"{tag}_{i}": array}, step=step)
        else:
            tracker.log_images({tag: arrays}, step=step)
