"""The life of a training run, from the output folder to the release: every promise of docs/reliability.md that
a training-like script keeps, kept here once. train_fairface.py and distill_fairface.py go through it:

    run = TrainingRun(args, logger)           # folder writable, Hub reachable, checkpoint path valid: at once
    ...                                       # (distill: load the teacher, derive flags from it)
    accelerator = run.start(run_flags)        # accelerator (DDP timeout), lock, resume check, stop signals
    images = run.load_data()                  # dataset, pixel cache, steps per epoch
    ...                                       # models, optimizer, LR schedule
    unet, optimizer = run.prepare({"unet": unet}, optimizer, lr_scheduler)  # checkpoint hooks (safetensors)
    run.resume(emas)                          # weights, step, new LR/Adam/EMA values applied
    run.begin(max_train_steps, "training")    # trackers, progress bar
    for batch in run.epoch_loader(images, epoch):
        ...                                   # the script's own step
        run.stop_if_asked(run.end_step(loss, grad_norm, finite))  # logs, non-finite streak, checkpoints, SIGTERM
    run.finish(release, "done: ...")          # last checkpoint, release (main process), push, end

A script keeps only what is its own: its models, its loss, what it releases. tests/test_promises.py runs each
promise against every script that makes it.
"""

import os
import sys

import torch
from tqdm.auto import tqdm

from . import checkpoints, distributed, resume_check, run_setup, step_metrics, stop_signals
from ..cli import fail
from ..data import fairface, group_balance
from ..hub import uploads
from ..labels import decode_condition
from ..model.pipeline import generate


class TrainingRun:
    """One run in --output_dir: its accelerator, step count, checkpoints, trackers and stop requests."""

    def __init__(self, args, logger):
        self.args, self.logger = args, logger
        self.checkpoint = run_setup.check_output_dir(args)  # before anything slow: a typo fails at once
        self.global_step, self.nonfinite_in_a_row, self.state, self.saved = 0, 0, {}, {}  # saved: step -> folder
        self.checkpoint_state = dict  # the script's own entries of training_state.json (a callable)

    # ------------------------------------------------------------------------------------------------ setup
    def start(self, run_flags=None, absent=None):
        """The accelerator (with --ddp_timeout and the run lock), the resume check of the flags that define the run
        (``run_flags``: resume_check's by default; ``absent``: what a record without a flag implies), the CPU
        threads, SIGTERM/SIGINT handlers. Returns the accelerator."""
        args = self.args
        flags = run_flags or resume_check.DATA_FLAGS + resume_check.MODEL_FLAGS
        self.accelerator = accelerator = run_setup.make_accelerator(args, self.logger)
        self.checkpoint = distributed.main_process_value(accelerator, self.checkpoint)  # rank 0 decides `latest`
        self.record = resume_check.record(args, accelerator.num_processes, flags)  # before the data: fails at once
        self.resume_changes = resume_check.check_or_exit(self.checkpoint, self.record, args.allow_resume_changes,
                                                         flags, grad_scaler=accelerator.scaler is not None,
                                                         absent=absent)
        distributed.use_available_cores(accelerator.device, self.logger)  # not accelerate launch's 1 thread
        self.stop = stop_signals.StopRequest()
        return accelerator

    def load_data(self):
        """The training images (utils/data/fairface.py FairFaceImages); sets ``steps_per_epoch``."""
        args, accelerator = self.args, self.accelerator
        _, images = run_setup.load_training_data(args, accelerator)
        weights = group_balance.balance_weights(images.attributes, args.balance_by, args.balance_power)
        self.sampling_weights = weights if args.balance_with == "sampling" else None
        images.loss_weights = weights if args.balance_with == "loss" else None
        self.logger.info(group_balance.describe_balance(args, nothing_to_balance=weights is None))
        world = accelerator.num_processes
        self.steps_per_epoch = len(images) // world // args.train_batch_size // args.gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            fail(f"{len(images)} images are too few for {world} process(es) x batch {args.train_batch_size} "
                 f"x accumulation {args.gradient_accumulation_steps}")
        return images

    def prepare(self, models, optimizer, lr_scheduler, save_extra=None, load_extra=None):
        """accelerate's prepare of the trained ``models`` ({checkpoint subfolder: model}) and the optimizer, with
        --gradient_checkpointing; checkpoints hold the models as safetensors (save_pretrained), plus what
        ``save_extra(folder)`` writes and ``load_extra(folder)`` reads back (EMAs, a target network).
        Returns the prepared models and optimizer, in order."""
        accelerator, names = self.accelerator, list(models)
        if self.args.gradient_checkpointing:
            for model in models.values():
                if getattr(model, "_supports_gradient_checkpointing", False):
                    model.enable_gradient_checkpointing()
            checkpointed = [name for name, model in models.items() if getattr(model, "is_gradient_checkpointing", 0)]
            self.logger.info(f"gradient checkpointing: {', '.join(checkpointed) or 'no model'} recompute "
                             "activations in backward")  # as the models themselves say (diffusers' flag)
        prepared = accelerator.prepare(*models.values(), optimizer)
        accelerator.register_for_checkpointing(lr_scheduler)
        self.lr_scheduler = lr_scheduler

        def save_model_hook(unwrapped, weights, folder):  # accelerate passes the models as prepared, in order
            if accelerator.is_main_process:
                for name, model in zip(names, unwrapped):
                    model.save_pretrained(os.path.join(folder, name))
                if save_extra:
                    save_extra(folder)
            weights.clear()  # nothing pickled: the weights are the safetensors above

        def load_model_hook(unwrapped, folder):
            if load_extra:
                load_extra(folder)
            for name, model in zip(names, unwrapped):
                loaded = type(model).from_pretrained(folder, subfolder=name, use_safetensors=True)
                model.load_state_dict(loaded.state_dict())
            unwrapped.clear()

        accelerator.register_save_state_pre_hook(save_model_hook)
        accelerator.register_load_state_pre_hook(load_model_hook)
        return prepared

    def resume(self, emas=None, after_load=None):
        """With --resume_from_checkpoint: the checkpoint's weights, optimizer, LR schedule and step, then the
        command line's new LR, Adam and EMA values applied (resume_check.apply_new_settings). ``after_load``:
        the script's own step once the state is loaded (e.g. EMAs the checkpoint lacks)."""
        args, accelerator, checkpoint = self.args, self.accelerator, self.checkpoint
        if args.resume_from_checkpoint and checkpoint is None:
            accelerator.print("no complete checkpoint yet: starting a new run")
        if checkpoint is not None:
            try:
                accelerator.load_state(checkpoint)
            except (OSError, RuntimeError, ValueError, KeyError) as error:  # e.g. another --block_out_channels
                fail(f"cannot resume from {checkpoint}: {str(error).strip().splitlines()[0]}")
            self.state = checkpoints.read_training_state(checkpoint)
            if after_load:
                after_load()
            resume_check.apply_new_settings(args, self.lr_scheduler, emas or {}, self.logger.warning)
            self.nonfinite_in_a_row = self.state.get("nonfinite_in_a_row", 0)
            accelerator.print(f"resumed from {checkpoint} at step {self.state['global_step']}")
            self.global_step = resume_check.go_on(self.state, self.resume_changes, self.steps_per_epoch,
                                                  self.lr_scheduler, self.logger.warning)
            self.saved.update({} if self.resume_changes else {self.global_step: checkpoint})  # not written again
        self.change_history = resume_check.history(self.state, self.resume_changes, self.global_step)

    def begin(self, max_train_steps, desc):
        """Trackers (--report_to, --tracker_project_name, the flags as their config) and the progress bar."""
        args, accelerator = self.args, self.accelerator
        self.max_train_steps = max_train_steps
        tracked = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=tracked)
        self.progress = tqdm(total=max_train_steps, initial=self.global_step, desc=desc,
                             disable=not accelerator.is_local_main_process)
        self.metrics = step_metrics.StepMetrics(accelerator.device)  # read every --logging_steps: no per-step sync

    # ------------------------------------------------------------------------------------------------ steps
    def epoch_loader(self, images, epoch):
        """This rank's batches of ``epoch`` from the current step on: the order depends on (seed, epoch) only, so
        a resumed run sees what the uninterrupted one would have (utils/data/fairface.py EpochSampler)."""
        args, accelerator = self.args, self.accelerator
        start = (self.global_step - epoch * self.steps_per_epoch) * args.gradient_accumulation_steps * \
            args.train_batch_size
        sampler = fairface.EpochSampler(len(images), args.seed, epoch, accelerator.process_index,
                                        accelerator.num_processes, start, weights=self.sampling_weights)
        return torch.utils.data.DataLoader(
            images, batch_size=args.train_batch_size, sampler=sampler, drop_last=True,
            num_workers=args.dataloader_num_workers, collate_fn=lambda items: fairface.collate(items, args.resolution),
            worker_init_fn=fairface.ignore_stop_signals, pin_memory=accelerator.device.type == "cuda")

    def end_step(self, loss, grad_norm, finite):
        """After an optimizer step: count it, log every --logging_steps, checkpoint every --checkpointing_steps,
        stop (checkpoint, one line, exit 2) after --max_nonfinite_steps non-finite steps in a row. Returns
        whether every rank is at a step where they may vote on a stop (``stop_if_asked``)."""
        args, step = self.args, self.global_step + 1
        self.global_step, self.nonfinite_in_a_row = step, 0 if finite else self.nonfinite_in_a_row + 1
        self.progress.update(1)
        self.metrics.add(loss, grad_norm, counted=finite)
        logging_step = step % args.logging_steps == 0 or step == self.max_train_steps
        if logging_step:
            self.metrics.report(self.accelerator, self.progress, self.lr_scheduler.get_last_lr()[0], step)
        if not finite:
            self.logger.warning(f"step {step}: non-finite loss/gradient, update skipped ({self.nonfinite_in_a_row} "
                                "in a row)")
        if self.nonfinite_in_a_row >= args.max_nonfinite_steps:
            path = self.save_checkpoint()
            self.progress.close()  # the error is the last line
            fail(f"{self.nonfinite_in_a_row} non-finite steps in a row; stopped. Checkpoint {path}; try a lower "
                 "--learning_rate (a resume applies it) or --mixed_precision bf16")
        checkpointed = step % args.checkpointing_steps == 0
        if checkpointed:
            self.save_checkpoint()
        return logging_step or checkpointed

    def stop_if_asked(self, all_ranks_here=True):
        """SIGTERM/SIGINT (preemption, Ctrl-C) on any rank: checkpoint, say how to resume, exit 0 on every rank."""
        if not self.stop.agreed(self.accelerator, all_ranks_here=all_ranks_here):
            return
        path = self.save_checkpoint()
        self.progress.close()
        self.accelerator.print(f"stopped at step {self.global_step} by {self.stop.name}; checkpoint {path}. Resume "
                               "with the same command plus --resume_from_checkpoint latest")
        self.accelerator.end_training()
        sys.exit(0)

    def save_checkpoint(self):
        """checkpoint-{step}/ with what a resume needs beyond the weights (every rank calls it); once per step."""
        if self.global_step not in self.saved:
            extra = dict(nonfinite_in_a_row=self.nonfinite_in_a_row, run=self.record,
                         steps_per_epoch=self.steps_per_epoch, resume_changes=self.change_history,
                         **self.checkpoint_state())
            self.saved[self.global_step] = checkpoints.save_checkpoint(
                self.accelerator, self.args.output_dir, self.global_step, extra, self.args.checkpoints_total_limit)
        return self.saved[self.global_step]

    def write_samples(self, pipeline, stem):
        """{stem}_{i}.png of --validation_conditions (seed i for the i-th), logged to the trackers (main process)."""
        samples = generate(pipeline, [decode_condition(c) for c in self.args.validation_conditions],
                           list(range(len(self.args.validation_conditions))))
        for i, image in enumerate(samples):
            image.save(os.path.join(self.args.output_dir, f"{stem}_{i}.png"))
        step_metrics.log_images(self.accelerator, samples, self.global_step)
        return samples

    # ------------------------------------------------------------------------------------------------ the end
    def finish(self, release, done):
        """The last checkpoint (unless this step's was just written), ``release()`` on the main process and the
        push with --push_to_hub, then every rank ends together and prints ``done`` (a text, or a callable giving
        it after the release)."""
        self.progress.close()
        self.save_checkpoint()
        if self.accelerator.is_main_process:
            release()
            if self.args.push_to_hub:
                uploads.push_release(self.args)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        self.accelerator.print(done() if callable(done) else done)
