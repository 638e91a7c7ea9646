"""Train an attribute-conditioned face diffusion model on FairFace (age x gender x race, 126 conditions).

    accelerate launch train_fairface.py                       # full FairFace, the seed's 128 px UNet
    accelerate launch train_fairface.py --demo                # offline, minutes on a CPU: synthetic faces, tiny UNet

The UNet (diffusers UNet2DConditionModel) sees the condition as three cross-attention tokens from a
ConditionEncoder (utils/model/pipeline.py) that has an "unknown" entry per attribute; dropping the whole condition
(--cond_drop_prob) trains the null condition for classifier-free guidance, dropping single attributes
(--attr_drop_prob) lets users leave any attribute out when sampling. The framing (FairFace config 0.25 tight,
1.25 wide) is a fourth such token (--framing_drop_prob). Framing and EMA: on by default, off with --demo (docs/training.md).

Outputs under --output_dir: epoch_{E}/ pipeline snapshots, sample_epoch_{E}_{i}.png, checkpoint-{step}/
training state (resume with --resume_from_checkpoint latest), and the final pipeline at the root.
"""

import argparse
import math
import os
import sys

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from utils.files import atomic_files
from utils.run import (checkpoints, distributed, flag_checks, nonfinite, objective, resume_check, run_setup,
                       step_metrics, stop_signals)
from utils.data import fairface
from utils.hub import uploads, model_card, remote_code
from utils.run.ema import build_emas, ema_variant, load_emas, start_emas_from
from utils.labels import FRAMINGS, decode_condition
from utils.cli import (DEFAULT_MODEL_DIR, DEMO_DEFAULTS, GuidanceInterval, beta, fail, finite_float,
                       nonnegative_float, nonnegative_int, positive_float, positive_int, probability)
from utils.model.pipeline import (ConditionEncoder, FairFacePipeline, build_unet, denoise, generate,
                                  DEFAULT_SCHEDULER, SAMPLING_DEFAULTS)

logger = get_logger(__name__)

SAMPLE_CONDITIONS = [42, 73, 120]  # fixed conditions and seeds for sample_epoch_{E}_{i}.png: epochs compare


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    # Data
    add("--dataset_name", default="HuggingFaceM4/FairFace", help="Hub dataset id or local folder in the same layout.")
    add("--dataset_config_names", nargs="+", default=["0.25", "1.25"], help="FairFace configs (face padding) to merge.")
    add("--dataset_splits", nargs="+", default=["train", "validation"], help="Splits to merge (all go to training).")
    add("--cache_dir", default=None, help="datasets cache directory.")
    add("--resolution", type=positive_int, default=128, help="Training image size (square, centre-cropped).")
    add("--random_flip", action="store_true", help="Randomly mirror faces horizontally.")
    add("--dataloader_num_workers", type=nonnegative_int, default=0, help="Data-loading worker processes.")
    add("--preprocess_cache", default=None, help="Folder for a uint8 pixel cache: decode/resize every image once "
        "(>=10x faster epochs, benchmarks/data_loading.py); keyed by dataset, configs, splits and resolution.")
    add("--demo", action="store_true", help="Offline demo: generate synthetic FairFace-layout data, tiny model.")
    # Model and conditioning (defaults: the seed's architecture)
    add("--block_out_channels", type=positive_int, nargs="+", default=[64, 128, 256, 512])
    add("--layers_per_block", type=positive_int, default=3)
    add("--attention_levels", type=int, nargs="+", default=[1], help="UNet levels with cross-attention (0 = top).")
    add("--cross_attention_dim", type=positive_int, default=512, help="Width of the condition tokens.")
    add("--condition_in_time_embedding", action=argparse.BooleanOptionalAction, default=False,
        help="Also add the condition to the timestep embedding (every ResNet block sees it). Off: on the demo data "
        "cross-attention alone reached the fidelity target sooner (docs/measurements.md).")
    add("--cond_drop_prob", type=probability, default=0.1, help="Drop the whole condition (classifier-free guidance).")
    add("--attr_drop_prob", type=probability, default=0.1, help="Drop each attribute on its own (partial conditions).")
    add("--framing_condition", action=argparse.BooleanOptionalAction, default=True, help="Condition on the framing "
        "(0.25 = tight, 1.25 = wide; SDXL micro-conditioning). --demo: off (docs/measurements.md: Framing and EMA).")
    add("--framing_drop_prob", type=probability, default=0.1, help="Drop the framing on its own (model's choice).")
    # Diffusion objective
    add("--num_train_timesteps", type=positive_int, default=1000)
    add("--beta_schedule", default="squaredcos_cap_v2", choices=["linear", "scaled_linear", "squaredcos_cap_v2",
        "sigmoid"], help="Cosine schedule: better than linear at small sizes.")
    add("--prediction_type", choices=["epsilon", "v_prediction"], default="v_prediction",
        help="v: fast samplers stay stable at high noise (epsilon + cosine gave noise at 25 steps; docs/measurements.md).")
    add("--snr_gamma", type=finite_float, default=5.0, help="Min-SNR loss weighting gamma; <=0 turns it off.")
    # Optimisation
    add("--train_batch_size", type=positive_int, default=64, help="Per-device batch size.")
    add("--num_epochs", type=positive_int, default=100)
    add("--max_train_steps", type=positive_int, default=None, help="Overrides --num_epochs when set.")
    add("--gradient_accumulation_steps", type=positive_int, default=1)
    add("--learning_rate", type=positive_float, default=2e-4)
    add("--lr_scheduler", default="cosine", help="diffusers get_scheduler name.", choices=[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"])
    add("--lr_warmup_steps", type=nonnegative_int, default=500, help="Longer than the run: the LR never peaks.")
    add("--adam_beta1", type=beta, default=0.9)
    add("--adam_beta2", type=beta, default=0.999)
    add("--adam_weight_decay", type=nonnegative_float, default=1e-2)
    add("--adam_epsilon", type=positive_float, default=1e-8)
    add("--max_grad_norm", type=positive_float, default=1.0)
    add("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA weights for samples and release.")
    add("--ema_decay", type=probability, default=None, help="Maximum EMA decay (warm-up ramps towards it); 0.9999.")
    add("--ema_power", type=positive_float, default=3 / 4, help="EMA warm-up: decay 1 - (1 + step) ** -power, up to "
        "--ema_decay (3/4: diffusers' train_unconditional.py; best measured mid-run).")
    # Benchmark hook (benchmarks/conditioning_fidelity.py): more EMAs, DECAY:POWER each: epoch_{E}_ema*/, checkpointed.
    add("--ema_variants", type=ema_variant, nargs="*", default=[], help=argparse.SUPPRESS)
    add("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Default: accelerate config. fp16 "
        "on a CPU trains in float32 (accelerate has no fp16 autocast there; it says so); bf16 works on CPUs.")
    add("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs (no effect on a CPU).")
    add("--torch_compile", action="store_true", help="torch.compile the UNet.")
    run_setup.add_ddp_timeout_arg(parser)
    add("--seed", type=nonnegative_int, default=0, help="Seeds weights, data order and every random draw of training.")
    add("--max_nonfinite_steps", type=positive_int, default=10, help="Stop (after a checkpoint) after this many "
        "non-finite losses in a row; isolated ones are skipped.")
    # Test hook: the loss is made NaN at these steps (numbered from 1, as logged).
    add("--inject_nonfinite_steps", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    # Outputs, checkpoints, logging
    add("--output_dir", default=DEFAULT_MODEL_DIR)
    add("--save_model_epochs", type=positive_int, default=10, help="Write epoch_{E}/ pipeline snapshots this often.")
    add("--save_images_epochs", type=positive_int, default=10, help="Write sample_epoch_{E}_{i}.png this often.")
    # Sampler of the samples, saved with every snapshot and the release as its defaults (FairFacePipeline
    # sampling_defaults); the defaults are the sweep's best (utils/model/pipeline.py SAMPLING_DEFAULTS, docs/distillation.md).
    add("--num_inference_steps", type=positive_int, default=SAMPLING_DEFAULTS["num_inference_steps"],
        help="DPM-Solver++ steps for the samples (default: %(default)s).")
    add("--guidance_scale", type=nonnegative_float, default=SAMPLING_DEFAULTS["guidance_scale"],
        help="Classifier-free guidance for the samples (default: %(default)s).")
    add("--guidance_interval", action=GuidanceInterval, default=SAMPLING_DEFAULTS["guidance_interval"],
        help="Guide only steps with LO <= timestep <= HI ('0 inf': every step; default: %(default)s).")
    add("--checkpointing_steps", type=positive_int, default=2000, help="Write checkpoint-{step}/ this often.")
    add("--checkpoints_total_limit", type=positive_int, default=None, help="Keep only this many checkpoints.")
    add("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder.')
    add("--allow_resume_changes", action="store_true", help="Resume even though data flags (batch size, processes, "
        "accumulation, data, resolution, seed, objective) differ from the checkpoint's (utils/run/resume_check.py).")
    add("--logging_steps", type=positive_int, default=10, help="Log loss, grad norm and lr (window means) this "
        "often: values stay on the device in between (no per-step GPU sync).")
    add("--report_to", default="tensorboard", choices=["all", "none", *flag_checks.TRACKER_PACKAGES],
        help="accelerate tracker; refused at once when its package is not installed.")
    add("--logging_dir", default="logs", help="Under --output_dir.")
    # Hub
    add("--push_to_hub", action="store_true", help="Upload the final pipeline, model card and samples.")
    add("--hub_model_id", type=uploads.repo_id_arg, default=None,
        help="user/repo (default: the output folder's name under your account).")
    add("--hub_private_repo", action="store_true")
    add("--hub_push_snapshots", action="store_true", help="Also upload epoch_{E}/ snapshots, in the background.")

    args = parser.parse_args(input_args)
    if args.demo:  # demo defaults, except where a flag was given on the command line
        parser.set_defaults(**DEMO_DEFAULTS)
        args = parser.parse_args(input_args)
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        args.snr_gamma = None
    flag_checks.check(parser, args)
    args.ema_decay = 0.9999 if args.ema_decay is None else args.ema_decay
    return args


def main(args):
    # ---------------------------------------------------------------------------------------- setup
    checkpoint = run_setup.check_output_dir(args)
    accelerator = run_setup.make_accelerator(args, logger)
    checkpoint = distributed.main_process_value(accelerator, checkpoint)  # rank 0 decides which is `latest`
    run_record = resume_check.record(args, accelerator.num_processes)  # checked before the data: fails at once
    resume_changes = resume_check.check_or_exit(checkpoint, run_record, args.allow_resume_changes,
                                                grad_scaler=accelerator.scaler is not None)
    distributed.use_available_cores(accelerator.device, logger)  # not accelerate launch's default of 1 thread
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    stop = stop_signals.StopRequest()

    # ---------------------------------------------------------------------------------------- data
    _, images = run_setup.load_training_data(args, accelerator)
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_batches_per_epoch = len(images) // world // args.train_batch_size
    steps_per_epoch = micro_batches_per_epoch // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        fail(f"{len(images)} images are too few for {world} process(es) x batch {args.train_batch_size} "
             f"x accumulation {args.gradient_accumulation_steps}")
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)

    # ---------------------------------------------------------------------------------------- model
    set_seed(args.seed)  # here, not earlier: building a pixel cache draws from the global RNG (DataLoader seeds)
    encoder = ConditionEncoder(embed_dim=args.cross_attention_dim, framings=FRAMINGS if args.framing_condition else None)
    unet = build_unet(args.resolution, args.block_out_channels, args.layers_per_block, args.attention_levels,
                      args.cross_attention_dim, condition_in_time_embedding=args.condition_in_time_embedding,
                      num_tokens=encoder.num_tokens)
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule,
                                    prediction_type=args.prediction_type)
    if accelerator.device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    models = {"unet": unet, "condition_encoder": encoder}
    emas = build_emas(models, args.ema_decay, args.ema_power) if args.use_ema else {}
    ema_variants = {f"ema{d:g}_p{p:.3g}": build_emas(models, d, p) for d, p in args.ema_variants}
    ema_folders = {**{f"{name}_ema": ema for name, ema in emas.items()},  # checkpoint subfolder -> EMA, all of them
                   **{f"{name}_{label}": ema for label, group in ema_variants.items() for name, ema in group.items()}}
    optimizer = torch.optim.AdamW(list(unet.parameters()) + list(encoder.parameters()), lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay,
                                  eps=args.adam_epsilon, fused=accelerator.device.type == "cuda")
    # Stepped by us once per optimizer step (an accelerate-prepared scheduler steps once per process).
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=max_train_steps)
    nonfinite.plant_cpu_grad_scaler(accelerator)  # test hook: fp16's grad scaler on a CPU
    unet, encoder, optimizer = accelerator.prepare(unet, encoder, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    if args.torch_compile:
        unet = torch.compile(unet)

    def save_model_hook(models, weights, output_dir):  # weights as safetensors via save_pretrained
        if accelerator.is_main_process:
            for model in models:
                name = "unet" if isinstance(model, UNet2DConditionModel) else "condition_encoder"
                model.save_pretrained(os.path.join(output_dir, name))
            for folder, ema in ema_folders.items():
                ema.save_pretrained(os.path.join(output_dir, folder))
        weights.clear()

    missing_emas = []  # a run without --use_ema resumed with it (--allow_resume_changes)

    def load_model_hook(models, input_dir):
        missing_emas[:] = load_emas(ema_folders, input_dir)
        while models:
            model = models.pop()
            name = "unet" if isinstance(model, UNet2DConditionModel) else "condition_encoder"
            loaded = type(model).from_pretrained(input_dir, subfolder=name, use_safetensors=True)
            model.load_state_dict(loaded.state_dict())

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)
    for ema in ema_folders.values():
        ema.to(accelerator.device)

    # ---------------------------------------------------------------------------------------- resume
    global_step, nonfinite_in_a_row, state, saved = 0, 0, {}, {}  # saved: step -> checkpoint of that step
    if args.resume_from_checkpoint:
        if checkpoint is None:
            accelerator.print("no complete checkpoint yet: starting a new run")
        else:
            try:
                accelerator.load_state(checkpoint)
            except (OSError, RuntimeError, ValueError, KeyError) as error:  # e.g. another --block_out_channels
                fail(f"cannot resume from {checkpoint}: {str(error).strip().splitlines()[0]}")
            state = checkpoints.read_training_state(checkpoint)
            start_emas_from(ema_folders, missing_emas, {"unet": unet, "condition_encoder": encoder}, logger.warning)
            resume_check.apply_new_settings(args, lr_scheduler, emas, logger.warning)  # new LR, Adam, EMA values
            global_step, nonfinite_in_a_row = state["global_step"], state.get("nonfinite_in_a_row", 0)
            accelerator.print(f"resumed from {checkpoint} at step {global_step}")
            global_step = resume_check.go_on(state, resume_changes, steps_per_epoch, lr_scheduler, logger.warning)
            saved.update({} if resume_changes else {global_step: checkpoint})  # not written again at the end
    change_history = resume_check.history(state, resume_changes, global_step)  # recorded in each checkpoint

    def pipeline_for_release(emas=emas):
        """The pipeline of the current weights (EMA ones when --use_ema), on CPU-independent copies."""
        # keep_torch_compile=False: the plain UNet2DConditionModel (--torch_compile wraps it in an OptimizedModule)
        models = {"unet": accelerator.unwrap_model(unet, keep_torch_compile=False),
                  "condition_encoder": accelerator.unwrap_model(encoder)}
        for name, ema in emas.items():
            models[name] = type(models[name]).from_config(models[name].config)
            ema.copy_to(models[name].parameters())
        sampling = {name: getattr(args, name) for name in SAMPLING_DEFAULTS}  # saved: from_pretrained samples so
        pipeline = FairFacePipeline(unet=models["unet"], condition_encoder=models["condition_encoder"],
                                    scheduler=noise_scheduler, sampling_defaults=sampling)
        return pipeline.set_scheduler(DEFAULT_SCHEDULER).to(accelerator.device)

    def save_checkpoint():  # with what a resume needs beyond the weights (utils/run/resume_check.py)
        if global_step not in saved:
            skipped_so_far = distributed.sum_over_ranks(accelerator, skipped)  # this epoch's, carried over a resume
            extra = dict(nonfinite_in_a_row=nonfinite_in_a_row, run=run_record, steps_per_epoch=steps_per_epoch,
                         resume_changes=change_history, skipped_images=[epoch, skipped_so_far])
            saved[global_step] = checkpoints.save_checkpoint(accelerator, args.output_dir, global_step, extra,
                                                          args.checkpoints_total_limit)
        return saved[global_step]

    def stop_run():  # SIGTERM/SIGINT (preemption, Ctrl-C): checkpoint, then a clean exit on every rank
        path = save_checkpoint()
        progress.close()
        accelerator.print(f"stopped at step {global_step} by {stop.name}; checkpoint {path}. Resume with the same "
                          "command plus --resume_from_checkpoint latest")
        accelerator.end_training()
        sys.exit(0)

    if accelerator.is_main_process:
        tracked = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("fairface-diffusion", config=tracked)
    logger.info(f"{len(images)} images, {world} process(es), {steps_per_epoch} steps/epoch, "
                f"{max_train_steps} steps ({num_epochs} epochs), {sum(p.numel() for p in unet.parameters()):,} "
                f"UNet parameters, {torch.get_num_threads()} torch threads per process")

    # ---------------------------------------------------------------------------------------- train
    progress = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process,
                    desc="training")
    metrics = step_metrics.StepMetrics(accelerator.device)  # read every --logging_steps: no per-step host sync
    step_loss = nonfinite.MicroBatchLoss()
    # Resumed at an epoch's last step: that epoch's end again (a kill may have come before its snapshot).
    first_epoch = global_step // steps_per_epoch - (global_step > 0 and global_step % steps_per_epoch == 0)
    epoch, skipped = first_epoch, 0
    for epoch in range(first_epoch, num_epochs):
        unet.train()
        start = (global_step - epoch * steps_per_epoch) * args.gradient_accumulation_steps * args.train_batch_size
        sampler = fairface.EpochSampler(len(images), args.seed, epoch, rank, world, start)
        loader = torch.utils.data.DataLoader(
            images, batch_size=args.train_batch_size, sampler=sampler, drop_last=True,
            num_workers=args.dataloader_num_workers, collate_fn=lambda items: fairface.collate(items, args.resolution),
            worker_init_fn=fairface.ignore_stop_signals, pin_memory=accelerator.device.type == "cuda")
        skipped, micro_step = resume_check.skipped_before(state, epoch, accelerator.is_main_process), 0
        for batch in loader:
            if global_step >= (epoch + 1) * steps_per_epoch or global_step >= max_train_steps:
                break
            skipped += batch["num_skipped"]
            generator = objective.step_generator(args.seed, global_step, micro_step, rank, accelerator.device)
            micro_step = (micro_step + 1) % args.gradient_accumulation_steps
            with accelerator.accumulate(unet, encoder):
                pixels, weights, attributes = (batch[key].to(accelerator.device, non_blocking=True)  # uint8; pinned
                                               for key in ("pixels", "weights", "attributes"))
                clean, attributes = objective.prepare_batch(pixels, attributes, generator, args.random_flip,
                                                           args.cond_drop_prob, args.attr_drop_prob,
                                                           args.framing_drop_prob)
                noise = torch.randn(clean.shape, generator=generator, device=clean.device)
                timesteps = torch.randint(0, args.num_train_timesteps, (clean.shape[0],), generator=generator,
                                          device=clean.device)
                noisy = noise_scheduler.add_noise(clean, noise, timesteps)
                with accelerator.autocast():
                    prediction = denoise(unet, noisy, timesteps, encoder(attributes))
                target = objective.diffusion_target(noise_scheduler, clean, noise, timesteps)
                weights = weights * objective.loss_weights(noise_scheduler, timesteps, args.snr_gamma)
                loss = objective.weighted_mse(prediction, target, weights)
                if global_step + 1 in args.inject_nonfinite_steps:
                    loss = loss * float("nan")
                accelerator.backward(loss)
                step_loss.add(loss)
                if not accelerator.sync_gradients:
                    continue
                loss = step_loss.take()  # the mean over the step's micro-batches, as logged
                # Updated only if finite on every rank (all-reduced; fp16: overflows too), utils/run/nonfinite.py. A
                # skipped update steps neither the LR schedule nor EMA.
                grad_norm, finite = nonfinite.step(accelerator, optimizer, list(unet.parameters()) +
                                                   list(encoder.parameters()), args.max_grad_norm, loss)
                if finite:
                    lr_scheduler.step()
                    for group in (emas, *ema_variants.values()):
                        for name, ema in group.items():
                            ema.step((unet if name == "unet" else encoder).parameters())
                optimizer.zero_grad(set_to_none=True)
            nonfinite_in_a_row = 0 if finite else nonfinite_in_a_row + 1
            global_step += 1
            progress.update(1)
            metrics.add(loss, grad_norm, counted=finite)
            logging_step = global_step % args.logging_steps == 0 or global_step == max_train_steps
            if logging_step:
                metrics.report(accelerator, progress, lr_scheduler.get_last_lr()[0], global_step)
            if not finite:
                logger.warning(f"step {global_step}: non-finite loss/gradient, update skipped "
                               f"({nonfinite_in_a_row} in a row)")
            if nonfinite_in_a_row >= args.max_nonfinite_steps:
                path = save_checkpoint()
                progress.close()  # the error is the last line
                fail(f"{nonfinite_in_a_row} non-finite steps in a row; stopped. Checkpoint {path}; try a lower "
                     "--learning_rate or --mixed_precision bf16")
            checkpointed = global_step % args.checkpointing_steps == 0
            if checkpointed:
                save_checkpoint()
            if global_step >= min((epoch + 1) * steps_per_epoch, max_train_steps):
                break  # the epoch's end (report, snapshot, samples) comes before a stop at its last step
            if stop.agreed(accelerator, all_ranks_here=logging_step or checkpointed):
                stop_run()

        # ---------------------------------------------------------------------------------------- epoch end
        unusable = distributed.sum_over_ranks(accelerator, skipped)  # the whole epoch, across a resume too
        if unusable:
            logger.warning(f"epoch {epoch + 1}: skipped {unusable} unusable images (broken, too small or too large)")
        accelerator.log({"skipped_images": unusable}, step=global_step)
        last_epoch = global_step >= max_train_steps
        if accelerator.is_main_process:
            epoch_number = epoch + 1
            pipeline = None
            if epoch_number % args.save_model_epochs == 0 or last_epoch:
                pipeline = pipeline_for_release()
                atomic_files.save_folder_atomic(os.path.join(args.output_dir, f"epoch_{epoch_number}"),
                                            lambda folder: remote_code.save_pipeline(pipeline, folder))
                for label, variant in ema_variants.items():
                    variant_pipeline = pipeline_for_release(variant)
                    atomic_files.save_folder_atomic(os.path.join(args.output_dir, f"epoch_{epoch_number}_{label}"),
                                                lambda folder: remote_code.save_pipeline(variant_pipeline, folder))
                if args.push_to_hub and args.hub_push_snapshots:
                    uploads.push_snapshot(args, os.path.join(args.output_dir, f"epoch_{epoch_number}"))
            if epoch_number % args.save_images_epochs == 0 or last_epoch:
                pipeline = pipeline or pipeline_for_release()
                samples = generate(pipeline, [decode_condition(c) for c in SAMPLE_CONDITIONS], [0, 1, 2])
                for i, image in enumerate(samples):
                    image.save(os.path.join(args.output_dir, f"sample_epoch_{epoch_number}_{i}.png"))
                step_metrics.log_images(accelerator, samples, global_step)
        accelerator.wait_for_everyone()
        if last_epoch:
            break
        if stop.agreed(accelerator):
            stop_run()

    # ---------------------------------------------------------------------------------------- release
    progress.close()
    save_checkpoint()  # unless this step's checkpoint was just written
    if accelerator.is_main_process:
        pipeline = pipeline_for_release()
        model_card.save_release(pipeline, args, len(images), global_step)
        if args.push_to_hub:
            uploads.push_release(args)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    accelerator.print(f"done: {global_step} steps; pipeline in {args.output_dir}")


if __name__ == "__main__":
    run_setup.run_main(main, parse_args)
