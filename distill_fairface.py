"""Distil a trained fairface-diffusion model into a few-step student with its guidance baked in.

    accelerate launch distill_fairface.py --teacher fairface-model --output_dir fairface-model-distilled
    accelerate launch distill_fairface.py --demo     # the quick start's fairface-demo, minutes on a CPU

Guided consistency distillation (the LCM recipe; utils/model/consistency.py): the teacher, with classifier-free
guidance, takes one DDIM step on its own noise schedule and prediction type, an EMA target network of the student
gives the target there, and the student (initialised from the teacher) learns to map every point of the path
to the start of its segment (multistep consistency, --num_segments 2 by default; 1 is LCM: straight to the clean
image). The student samples with DDIM through the segment starts (LCMScheduler for one segment), one UNet
evaluation per image per step: 2 by default;
it is an ordinary release (safetensors, shipped pipeline code, a model card naming the teacher's weight hash),
whose saved sampling defaults make every script of this repository use its few-step sampler.

Outputs under --output_dir: checkpoint-{step}/ (resume with --resume_from_checkpoint latest), the student at the
root, and its samples sample_step_{N}_{i}.png (--validation_conditions). The data flags must name the teacher's training data (or data like it): --dataset_name etc.
"""

import argparse
import copy
import math
import os
import time

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler

from utils.run import flag_checks, lifecycle, nonfinite, objective, run_args, run_setup
from utils.model import consistency
from utils.hub import model_card, student_card
from utils.cli import DEFAULT_MODEL_DIR, DEMO_DEFAULTS, fail, positive_float, positive_int, probability
from utils.model.conditions import load_pipeline_or_exit
from utils.labels import UNKNOWN
from utils.model.pipeline import FairFacePipeline, denoise, guided_prediction

logger = get_logger(__name__)

DEMO = dict(teacher=DEMO_DEFAULTS["output_dir"], output_dir=DEMO_DEFAULTS["output_dir"] + "-distilled",
            **{k: DEMO_DEFAULTS[k] for k in ("dataset_name", "preprocess_cache", "random_flip", "train_batch_size")},
            max_train_steps=400, learning_rate=1e-4, checkpointing_steps=50,
            num_ddim_timesteps=10)  # 400 steps, 10-point grid: the recipe measured in docs/distillation.md
# Flags whose change makes a resumed run another run (utils/run/resume_check.py); teacher_weights: its SHA-256.
RUN_FLAGS = ["method", "train_batch_size", "num_processes", "gradient_accumulation_steps", "dataset_name",
             "dataset_config_names", "dataset_splits", "seed", "teacher_weights", "guidance_scale",
             "num_ddim_timesteps", "num_segments", "huber_c", "ema_decay", "cond_drop_prob", "attr_drop_prob",
             "framing_drop_prob", "random_flip", "balance_by", "balance_power", "balance_with"]
RECORD_ABSENT = {"num_segments": 1}  # flags a run recorded before they existed ran with: earlier runs were LCM


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--teacher", default=None, help="The model to distil: a release folder, an epoch_N/ snapshot or a Hub id.")
    add("--demo", action="store_true", help="Distil the quick start's fairface-demo on its generated data.")
    run_args.add_data_args(parser)  # the teacher's data (or data like it); dropout: distil those outputs too
    add = parser.add_argument_group("distillation").add_argument
    add("--method", choices=["consistency", "guidance"], default="consistency", help="consistency: guided "
        "consistency distillation (multistep, see --num_segments); guidance: the guided teacher's prediction in one "
        "pass at every timestep (Meng et al. 2023, stage 1), samples with the teacher's own sampler. Default "
        "consistency: on the demo model 79.8 %% vs 45.6 %% all three at 1 step, a tie at 2-4 (docs/distillation.md).")
    add("--guidance_scale", type=positive_float, default=None, help="Guidance baked into the student "
        "(default: the teacher's saved one). Half a point over it (2.5 for the demo's 2) made the best 4-segment "
        "student: 98.6 %% all three at 4 evaluations, worst group -4.0 (docs/distillation.md).")
    add("--num_ddim_timesteps", type=positive_int, default=50, help="Grid of the teacher's DDIM steps (LCM's 50).")
    add("--num_segments", type=positive_int, default=None, help="Multistep consistency (Heek et al. 2024): cut the "
        "grid into this many segments, map each point to its segment's start, sample with DDIM through the starts "
        "(one evaluation per segment). Default 2 (consistency): on the demo model 95.6 %% all three at 2 "
        "evaluations (1,200 steps; 92.3 %% at --demo's 400, where LCM gives 87.3 %% at 2 and 92.2 %% at its 4): two "
        "UNet calls per face. 1: LCM, straight to the clean image, the best at 1 evaluation (92.7 %%). 4 with "
        "--num_ddim_timesteps 20: 96.5 %% at 4 (800 steps), 98.6 %% with --guidance_scale 2.5 (docs/distillation.md). "
        "Must divide --num_ddim_timesteps.")
    add("--huber_c", type=positive_float, default=None, help="Pseudo-Huber c (default 0.00054 * sqrt(pixels "
        "per image), Song & Dhariwal 2023).")
    add("--ema_decay", type=probability, default=0.95, help="EMA decay of the target network (LCM, CD: 0.95).")
    add("--release_weights", choices=["target", "student"], default="target", help="Which network to release.")
    add("--num_inference_steps", type=positive_int, default=None, help="The student's saved default steps "
        "(default: --num_segments, or 4 for one segment: LCM's best at --demo's 400 steps, 92.5 %% all three; "
        "docs/distillation.md).")
    # Optimisation: LCM's recipe (1e-5, constant after a short warm-up, no weight decay)
    optimisation = run_args.add_optimization_args(parser, learning_rate=1e-5, lr_scheduler="constant_with_warmup",
                                                  lr_warmup_steps=20, adam_weight_decay=0.0)
    optimisation.add_argument("--max_train_steps", type=positive_int, default=4000)
    run_args.add_lifecycle_args(parser, output_dir=DEFAULT_MODEL_DIR + "-distilled", checkpointing_steps=500,
                                report_to="none", tracker_project_name="fairface-distillation")
    args = parser.parse_args(input_args)
    if args.demo:
        parser.set_defaults(**DEMO)
        args = parser.parse_args(input_args)
    if args.teacher is None:
        parser.error("--teacher DIR_OR_REPO is required (or --demo)")
    flag_checks.check_tracker(parser, args)
    return args


def student_scheduler(args, teacher_scheduler):
    """The student's sampler: LCM for one segment, DDIM through the segment starts for several (multistep
    consistency), the teacher's own for guidance distillation."""
    if args.method == "guidance":
        return teacher_scheduler
    if args.num_segments > 1:
        return consistency.multistep_scheduler(teacher_scheduler.config)
    return consistency.lcm_scheduler(teacher_scheduler.config, args.num_ddim_timesteps)


def default_inference_steps(num_segments):
    """One evaluation per segment; LCM (one segment) samples best at 4 steps (docs/distillation.md)."""
    return 4 if num_segments == 1 else num_segments


def student_pipeline(unet, encoder, teacher_scheduler, args):
    """The student as released: its weights, the teacher's frozen condition encoder and its own sampler, one UNet
    evaluation per step with the guidance baked in. ``args``: the parsed flags, or a checkpoint's run record."""
    steps = getattr(args, "num_inference_steps", None) or default_inference_steps(args.num_segments)
    return FairFacePipeline(
        unet=unet, condition_encoder=encoder, scheduler=student_scheduler(args, teacher_scheduler),
        sampling_defaults=dict(num_inference_steps=steps, guidance_scale=1.0, guidance_interval=None,
                               distilled_guidance_scale=args.guidance_scale))


def main(args):
    # ---------------------------------------------------------------------------------------- setup
    run = lifecycle.TrainingRun(args, logger)
    teacher = load_pipeline_or_exit(args.teacher)
    identity = student_card.teacher_identity(args.teacher)
    config = teacher.scheduler.config
    args.teacher_weights, args.num_train_timesteps = identity["weights_sha256"], config.num_train_timesteps
    args.resolution = teacher.unet.config.sample_size
    if args.guidance_scale is None:
        args.guidance_scale = float(teacher.sampling_settings()["guidance_scale"])
    if config.num_train_timesteps % args.num_ddim_timesteps:
        fail(f"--num_ddim_timesteps {args.num_ddim_timesteps} must divide the teacher's {config.num_train_timesteps} "
             "training timesteps")
    if args.num_segments is None:
        args.num_segments = 2 if args.method == "consistency" else 1
    if args.num_ddim_timesteps % args.num_segments:
        fail(f"--num_segments {args.num_segments} must divide --num_ddim_timesteps {args.num_ddim_timesteps}")
    if args.num_segments > 1 and args.method != "consistency":
        fail("--num_segments applies to --method consistency only")
    args.num_inference_steps = args.num_inference_steps or default_inference_steps(args.num_segments)
    args.huber_c = args.huber_c or 0.00054 * math.sqrt(3 * args.resolution ** 2)
    accelerator = run.start(RUN_FLAGS, absent=RECORD_ABSENT)

    # ---------------------------------------------------------------------------------------- data
    images = run.load_data()

    # ---------------------------------------------------------------------------------------- models
    set_seed(args.seed)
    device = accelerator.device
    teacher_unet, encoder = teacher.unet.to(device).requires_grad_(False), teacher.condition_encoder.to(device)
    encoder.requires_grad_(False)
    unet = copy.deepcopy(teacher_unet).requires_grad_(True).train()  # the student trains (the teacher: eval)
    target = copy.deepcopy(teacher_unet)  # EMA of the student, no gradients
    alphas = consistency.teacher_alphas(config).to(device)
    grid, skip = consistency.grid_timesteps(config.num_train_timesteps, args.num_ddim_timesteps)
    grid, prediction_type = grid.to(device), config.prediction_type
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=args.max_train_steps)

    def load_target(folder):
        loaded = UNet2DConditionModel.from_pretrained(folder, subfolder="unet_target", use_safetensors=True)
        target.load_state_dict(loaded.state_dict())

    unet, optimizer = run.prepare({"unet": unet}, optimizer, lr_scheduler,
                                  save_extra=lambda folder: target.save_pretrained(os.path.join(folder, "unet_target")),
                                  load_extra=load_target)

    # ---------------------------------------------------------------------------------------- resume
    run.resume()
    started = time.perf_counter() - run.state.get("train_seconds", 0.0)  # the whole run's training time
    run.checkpoint_state = lambda: dict(train_seconds=time.perf_counter() - started)

    # ---------------------------------------------------------------------------------------- distil
    def distillation_loss(batch, generator):
        pixels, weights, attributes = (batch[k].to(device) for k in ("pixels", "weights", "attributes"))
        clean, attributes = objective.prepare_batch(pixels, attributes, generator, args.random_flip,
                                                    args.cond_drop_prob, args.attr_drop_prob, args.framing_drop_prob)
        noise = torch.randn(clean.shape, generator=generator, device=device)
        if args.method == "guidance":  # every training timestep: the student replaces the teacher's sampler steps
            start = torch.randint(0, config.num_train_timesteps, (clean.shape[0],), generator=generator, device=device)
        else:
            start = grid[torch.randint(0, len(grid), (clean.shape[0],), generator=generator, device=device)]
        noisy = consistency.add_noise(alphas, clean, noise, start)
        tokens = encoder(attributes)
        with accelerator.autocast():
            output = denoise(unet, noisy, start, tokens).float()
        with torch.no_grad():
            null_tokens = encoder(torch.full_like(attributes, UNKNOWN))
            guided = guided_prediction(teacher_unet, noisy, start, tokens, null_tokens, args.guidance_scale).float()
        if args.method == "guidance":  # the guided prediction itself, in the teacher's prediction type
            per_image = ((output - guided) ** 2).mean(dim=(1, 2, 3))
            return (per_image * weights).sum() / weights.sum().clamp(min=1.0)
        segment_start = consistency.segment_starts(start, skip, args.num_ddim_timesteps, args.num_segments)
        prediction = consistency.clean_estimate(output, start, noisy, segment_start, alphas, prediction_type)
        with torch.no_grad():
            previous = start - skip
            x0, epsilon = consistency.predicted_original(guided, start, noisy, alphas, prediction_type)
            stepped = consistency.ddim_step(x0, epsilon, previous, alphas)
            at = previous.clamp(min=0)
            target_clean = consistency.clean_estimate(denoise(target, stepped, at, tokens).float(), at, stepped,
                                                      segment_start, alphas, prediction_type)
            reached = torch.where((previous == segment_start).view(-1, 1, 1, 1), stepped,  # f(x, start) = x
                                  consistency.step_to(target_clean, stepped, at, segment_start, alphas))
            goal = consistency.ddim_inverse(noisy, start, reached, segment_start, alphas)
        per_image = consistency.pseudo_huber(prediction, goal, args.huber_c)
        return (per_image * weights).sum() / weights.sum().clamp(min=1.0)

    run.begin(args.max_train_steps, "distilling")
    logger.info(f"{len(images)} images, {run.steps_per_epoch} steps/epoch, {args.max_train_steps} steps, guidance "
                f"{args.guidance_scale:g} baked in, teacher {identity['teacher']} ({identity['weights_sha256'][:12]})")
    step_loss = nonfinite.MicroBatchLoss()
    epoch = run.global_step // run.steps_per_epoch
    while run.global_step < args.max_train_steps:
        micro_step = 0
        for batch in run.epoch_loader(images, epoch):
            if run.global_step >= min((epoch + 1) * run.steps_per_epoch, args.max_train_steps):
                break
            generator = objective.step_generator(args.seed, run.global_step, micro_step, accelerator.process_index,
                                                 device)
            micro_step = (micro_step + 1) % args.gradient_accumulation_steps
            with accelerator.accumulate(unet):
                loss = distillation_loss(batch, generator)
                accelerator.backward(loss)
                step_loss.add(loss)
                if not accelerator.sync_gradients:
                    continue
                loss = step_loss.take()
                grad_norm, finite = nonfinite.step(accelerator, optimizer, unet.parameters(), args.max_grad_norm, loss)
                if finite:
                    lr_scheduler.step()
                    with torch.no_grad():  # the target follows the student (EMA)
                        for t, s in zip(target.parameters(), accelerator.unwrap_model(unet).parameters()):
                            t.lerp_(s, 1 - args.ema_decay)
                optimizer.zero_grad(set_to_none=True)
            run.stop_if_asked(run.end_step(loss, grad_norm, finite))
        epoch += 1

    # ---------------------------------------------------------------------------------------- release
    train_seconds = []  # the whole run's, taken once after the last checkpoint (the card and the last line)

    def release():
        train_seconds.append(time.perf_counter() - started)
        weights = target if args.release_weights == "target" else accelerator.unwrap_model(unet)
        student = student_pipeline(weights, encoder, teacher.scheduler, args)
        card = student_card.build_card(args, identity, run.global_step, train_seconds[0], len(images),
                                       model_card.card_repo_id(args))
        model_card.save_release(student, args, len(images), run.global_step, card=card)
        run.write_samples(student, f"sample_step_{run.global_step}")

    run.finish(release, lambda: f"done: {run.global_step} steps in {train_seconds[0] if train_seconds else 0:.0f} s; "
               f"student in {args.output_dir}")


if __name__ == "__main__":
    run_setup.run_main(main, parse_args)
