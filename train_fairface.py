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

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler

from utils.files import atomic_files
from utils.run import distributed, flag_checks, lifecycle, nonfinite, objective, resume_check, run_args, run_setup
from utils.hub import uploads, model_card, remote_code
from utils.run.ema import build_emas, ema_variant, load_emas, start_emas_from
from utils.labels import FRAMINGS
from utils.data.group_balance import DISTRIBUTIONS
from utils.cli import (DEFAULT_MODEL_DIR, DEMO_DEFAULTS, DEMO_LONG_TAILED_DIR, LONG_TAILED_DEMO_DEFAULTS,
                       GuidanceInterval, finite_float, nonnegative_float,
                       positive_float, positive_int, probability)
from utils.model.pipeline import (ConditionEncoder, FairFacePipeline, build_unet, denoise, DEFAULT_SCHEDULER,
                                  SAMPLING_DEFAULTS)

logger = get_logger(__name__)

def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = run_args.add_data_args(parser).add_argument
    add("--resolution", type=positive_int, default=128, help="Training image size (square, centre-cropped).")
    add("--demo", action="store_true", help="Offline demo: generate synthetic FairFace-layout data, tiny model.")
    add("--demo_distribution", choices=DISTRIBUTIONS, default="uniform", help="--demo's faces: every condition "
        "equally often (2016 faces), or 'fairface': FairFace's frequencies, long-tailed by age (16,128 faces in "
        f"{DEMO_LONG_TAILED_DIR}; docs/long_tail.md). Default: %(default)s.")
    add = parser.add_argument_group("model and conditioning (defaults: the seed's architecture)").add_argument
    add("--block_out_channels", type=positive_int, nargs="+", default=[64, 128, 256, 512])
    add("--layers_per_block", type=positive_int, default=3)
    add("--attention_levels", type=int, nargs="+", default=[1], help="UNet levels with cross-attention (0 = top).")
    add("--cross_attention_dim", type=positive_int, default=512, help="Width of the condition tokens.")
    add("--condition_in_time_embedding", action=argparse.BooleanOptionalAction, default=False,
        help="Also add the condition to the timestep embedding (every ResNet block sees it). Off: on the demo data "
        "cross-attention alone reached the fidelity target sooner (docs/measurements.md).")
    add("--framing_condition", action=argparse.BooleanOptionalAction, default=True, help="Condition on the framing "
        "(0.25 = tight, 1.25 = wide; SDXL micro-conditioning). --demo: off (docs/measurements.md: Framing and EMA).")
    add = parser.add_argument_group("diffusion objective").add_argument
    add("--num_train_timesteps", type=positive_int, default=1000)
    add("--beta_schedule", default="squaredcos_cap_v2", choices=["linear", "scaled_linear", "squaredcos_cap_v2",
        "sigmoid"], help="Cosine schedule: better than linear at small sizes.")
    add("--prediction_type", choices=["epsilon", "v_prediction"], default="v_prediction",
        help="v: fast samplers stay stable at high noise (epsilon + cosine gave noise at 25 steps; docs/measurements.md).")
    add("--snr_gamma", type=finite_float, default=5.0, help="Min-SNR loss weighting gamma; <=0 turns it off.")
    # Optimisation (weight decay 1e-2: AdamW's usual; warm-up 500: longer than --demo's run, whose LR never peaks)
    optimisation = run_args.add_optimization_args(parser, learning_rate=2e-4, lr_scheduler="cosine",
                                                  lr_warmup_steps=500, adam_weight_decay=1e-2)
    optimisation.add_argument("--num_epochs", type=positive_int, default=100)
    optimisation.add_argument("--max_train_steps", type=positive_int, default=None,
                              help="Overrides --num_epochs when set.")
    add = parser.add_argument_group("EMA, speed").add_argument
    add("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA weights for samples and release.")
    add("--ema_decay", type=probability, default=None, help="Maximum EMA decay (warm-up ramps towards it); 0.9999.")
    add("--ema_power", type=positive_float, default=3 / 4, help="EMA warm-up: decay 1 - (1 + step) ** -power, up to "
        "--ema_decay (3/4: diffusers' train_unconditional.py; best measured mid-run).")
    # Benchmark hook (benchmarks/conditioning_fidelity.py): more EMAs, DECAY:POWER each: epoch_{E}_ema*/, checkpointed.
    add("--ema_variants", type=ema_variant, nargs="*", default=[], help=argparse.SUPPRESS)
    add("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs (no effect on a CPU).")
    add("--torch_compile", action="store_true", help="torch.compile the UNet.")
    # Test hook: the loss is made NaN at these steps (numbered from 1, as logged).
    add("--inject_nonfinite_steps", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    # Outputs, checkpoints, logging, Hub
    add = run_args.add_lifecycle_args(parser, output_dir=DEFAULT_MODEL_DIR, checkpointing_steps=2000,
                                      report_to="tensorboard", tracker_project_name="fairface-diffusion").add_argument
    add("--save_model_epochs", type=positive_int, default=10, help="Write epoch_{E}/ pipeline snapshots this often.")
    add("--save_images_epochs", type=positive_int, default=10, help="Write sample_epoch_{E}_{i}.png this often.")
    add("--hub_push_snapshots", action="store_true", help="Also upload epoch_{E}/ snapshots, in the background.")
    add = parser.add_argument_group("sampler of the samples and the release").add_argument
    # Sampler of the samples, saved with every snapshot and the release as its defaults (FairFacePipeline
    # sampling_defaults); the defaults are the sweep's best (utils/model/pipeline.py SAMPLING_DEFAULTS, docs/distillation.md).
    add("--num_inference_steps", type=positive_int, default=SAMPLING_DEFAULTS["num_inference_steps"],
        help="DPM-Solver++ steps for the samples (default: %(default)s).")
    add("--guidance_scale", type=nonnegative_float, default=SAMPLING_DEFAULTS["guidance_scale"],
        help="Classifier-free guidance for the samples (default: %(default)s).")
    add("--guidance_interval", action=GuidanceInterval, default=SAMPLING_DEFAULTS["guidance_interval"],
        help="Guide only steps with LO <= timestep <= HI ('0 inf': every step; default: %(default)s).")

    args = parser.parse_args(input_args)
    if args.demo:  # demo defaults, except where a flag was given on the command line
        parser.set_defaults(**{**DEMO_DEFAULTS, **(LONG_TAILED_DEMO_DEFAULTS if args.demo_distribution == "fairface"
                                                   else {})})
        args = parser.parse_args(input_args)
    elif args.demo_distribution != "uniform":
        parser.error("--demo_distribution chooses --demo's generated faces; add --demo")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        args.snr_gamma = None
    flag_checks.check(parser, args)
    args.ema_decay = 0.9999 if args.ema_decay is None else args.ema_decay
    return args


def main(args):
    # ---------------------------------------------------------------------------------------- setup
    run = lifecycle.TrainingRun(args, logger)
    accelerator = run.start()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # ---------------------------------------------------------------------------------------- data
    images = run.load_data()
    steps_per_epoch = run.steps_per_epoch
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
    missing_emas = []  # a run without --use_ema resumed with it (--allow_resume_changes)

    def save_emas(folder):
        for name, ema in ema_folders.items():
            ema.save_pretrained(os.path.join(folder, name))

    def load_checkpoint_emas(folder):
        missing_emas[:] = load_emas(ema_folders, folder)

    unet, encoder, optimizer = run.prepare(models, optimizer, lr_scheduler, save_emas, load_checkpoint_emas)
    if args.torch_compile:
        unet = torch.compile(unet)
    for ema in ema_folders.values():
        ema.to(accelerator.device)

    # ---------------------------------------------------------------------------------------- resume
    run.resume(emas, after_load=lambda: start_emas_from(ema_folders, missing_emas, {"unet": unet, "condition_encoder":
                                                                                   encoder}, logger.warning))
    # Resumed at an epoch's last step: that epoch's end again (a kill may have come before its snapshot).
    first_epoch = run.global_step // steps_per_epoch - (run.global_step > 0 and run.global_step % steps_per_epoch == 0)
    epoch, skipped = first_epoch, 0  # this epoch's unusable images, carried over a resume in each checkpoint
    run.checkpoint_state = lambda: dict(skipped_images=[epoch, distributed.sum_over_ranks(accelerator, skipped)])

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

    run.begin(max_train_steps, "training")
    logger.info(f"{len(images)} images, {accelerator.num_processes} process(es), {steps_per_epoch} steps/epoch, "
                f"{max_train_steps} steps ({num_epochs} epochs), {sum(p.numel() for p in unet.parameters()):,} "
                f"UNet parameters, {torch.get_num_threads()} torch threads per process")

    # ---------------------------------------------------------------------------------------- train
    step_loss = nonfinite.MicroBatchLoss()
    for epoch in range(first_epoch, num_epochs):
        unet.train()
        skipped, micro_step = resume_check.skipped_before(run.state, epoch, accelerator.is_main_process), 0
        for batch in run.epoch_loader(images, epoch):
            if run.global_step >= min((epoch + 1) * steps_per_epoch, max_train_steps):
                break
            skipped += batch["num_skipped"]
            generator = objective.step_generator(args.seed, run.global_step, micro_step, accelerator.process_index,
                                                 accelerator.device)
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
                if run.global_step + 1 in args.inject_nonfinite_steps:
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
            may_vote = run.end_step(loss, grad_norm, finite)
            if run.global_step >= min((epoch + 1) * steps_per_epoch, max_train_steps):
                break  # the epoch's end (report, snapshot, samples) comes before a stop at its last step
            run.stop_if_asked(may_vote)

        # ---------------------------------------------------------------------------------------- epoch end
        unusable = distributed.sum_over_ranks(accelerator, skipped)  # the whole epoch, across a resume too
        if unusable:
            logger.warning(f"epoch {epoch + 1}: skipped {unusable} unusable images (broken, too small or too large)")
        accelerator.log({"skipped_images": unusable}, step=run.global_step)
        last_epoch = run.global_step >= max_train_steps
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
                run.write_samples(pipeline or pipeline_for_release(), f"sample_epoch_{epoch_number}")
        accelerator.wait_for_everyone()
        if last_epoch:
            break
        run.stop_if_asked()

    # ---------------------------------------------------------------------------------------- release
    run.finish(lambda: model_card.save_release(pipeline_for_release(), args, len(images), run.global_step),
               f"done: {run.global_step} steps; pipeline in {args.output_dir}")


if __name__ == "__main__":
    run_setup.run_main(main, parse_args)
