"""The release's model card and sample grid: what a released pipeline says about itself.

``save_release(pipeline, args, num_images, global_step)``
    The final pipeline at the root of ``--output_dir``, ``samples.png`` (a labelled grid: one row per condition,
    one column per seed) and the model card ``README.md`` (``model_card_template.md``), replacing the previous
    release as a whole, never a mix of both (``utils/hub/release.py``).
``build_model_card(pipeline, args, num_images, global_step)``
    The card: how to sample, the 126 conditions, the training settings, the data (never a local path), licence,
    intended use, limitations and bias.
``set_card_repo_id`` / ``set_card_space``
    Edit a saved card once the upload knows the repo id the Hub resolved, or the Space that serves the model
    (utils/hub/uploads.py calls them just before it uploads).
"""

import logging
import os
import re

import huggingface_hub

from . import release, remote_code
from ..data.group_balance import describe_balance
from ..grid import labelled_grid
from ..labels import AGES, GENDERS, RACES, decode_condition, describe_condition, encode_condition, label_table_markdown
from ..model.pipeline import generate

logger = logging.getLogger(__name__)

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card_template.md")
FAIRFACE = "HuggingFaceM4/FairFace"
# samples.png: every race, both genders, seven age groups; includes the default training samples' conditions 42,
# 73, 120 (--validation_conditions).
SAMPLE_GRID_CONDITIONS = [encode_condition(*c) for c in
                          ((3, 0, 0), (8, 1, 1), (1, 1, 2), (5, 0, 3), (4, 1, 4), (2, 0, 5), (7, 1, 6))]
SAMPLE_GRID_SEEDS = [0, 1, 2, 3]
USERNAME_PLACEHOLDER = "your-username"  # in the card until the push knows the account (no --hub_model_id)
_CARD_REPO_ID = re.compile(r"<!-- fairface-diffusion repo_id: (\S+) -->")
_CARD_SPACE = re.compile(r"<!-- fairface-diffusion space -->.*")  # the card's Space line (empty until --space)


# ------------------------------------------------------------------------------------------------ repo ids
def requested_repo_id(args):
    """--hub_model_id, or the output folder's name (the Hub puts it under the logged-in account)."""
    return args.hub_model_id or os.path.basename(os.path.normpath(os.path.abspath(args.output_dir)))


def card_repo_id(args):
    repo_id = requested_repo_id(args)
    return repo_id if "/" in repo_id else f"{USERNAME_PLACEHOLDER}/{repo_id}"


# ------------------------------------------------------------------------------------------------ release
def save_release(pipeline, args, num_images, global_step, card=None):
    """Pipeline (safetensors), samples.png and README.md at the root of --output_dir, replacing the previous
    release as a whole (utils/hub/release.py). ``card``: a ready card (a distilled student's); default: the
    trained model's card built here."""
    if card is None:
        card = build_model_card(pipeline, args, num_images, global_step)

    def write(folder):
        remote_code.save_pipeline(pipeline, folder)  # + the code plain diffusers loads it with
        sample_grid(pipeline).save(os.path.join(folder, "samples.png"))
        card.save(os.path.join(folder, "README.md"))

    release.publish(args.output_dir, write)


def sample_grid(pipeline, conditions=SAMPLE_GRID_CONDITIONS, seeds=SAMPLE_GRID_SEEDS):
    """Rows = conditions, columns = seeds, with the pipeline's saved sampler settings (the training samples')."""
    pairs = [(condition, seed) for condition in conditions for seed in seeds]
    images = generate(pipeline, [decode_condition(c) for c, _ in pairs], [s for _, s in pairs], batch_size=8)
    return labelled_grid(images, len(conditions), len(seeds),
                         row_labels=[f"{c}: {describe_condition(c)}" for c in conditions],
                         col_labels=[f"seed {s}" for s in seeds])


def describe_data(args, num_images):
    """(short text, long text, Hub dataset id or None, synthetic?) of the training data; never a local path."""
    name = args.dataset_name
    parts = f"configs {' + '.join(args.dataset_config_names)}, splits {' + '.join(args.dataset_splits)} merged"
    if os.path.isdir(name):
        folder = os.path.basename(os.path.normpath(name))
        readme = os.path.join(name, "README.md")
        synthetic = getattr(args, "demo", False)
        if not synthetic and os.path.isfile(readme):
            with open(readme, encoding="utf-8") as f:
                synthetic = "synthetic demo" in f.read().lower()  # utils/data/demo_data.py's dataset card
        if synthetic:
            return ("synthetic demo data", f"synthetic demo data: {num_images:,} procedurally drawn faces in the "
                    f"FairFace layout (`utils/data/demo_data.py`, local folder `{folder}`, {parts}); no photographs of "
                    "people.", None, True)
        return (f"a local copy of FairFace-layout data (`{folder}`)",
                f"a local dataset folder `{folder}` in the layout and label order of FairFace ({parts}): "
                f"{num_images:,} images. It is not on the Hub.", None, False)
    link = f"[{name}](https://huggingface.co/datasets/{name})"
    text = f"{link}, {parts}: {num_images:,} images."
    if name == FAIRFACE and {"0.25", "1.25"} <= set(args.dataset_config_names):
        text += (" Configs 0.25 and 1.25 hold the same faces cropped with less and more margin, so each face is "
                 "seen twice.")
    if "validation" in args.dataset_splits:
        text += " The validation split was used for training too: evaluate on other data."
    return (f"FairFace ({link})" if name == FAIRFACE else link), text, name, False


def _run_setup(args):
    """(processes, mixed precision) of the accelerate run this is called in; one process outside a run."""
    from accelerate.state import AcceleratorState, is_initialized

    if is_initialized():
        state = AcceleratorState()
        precision = str(state.mixed_precision)
        # No float16 autocast on a CPU (utils/run/flag_checks.py).
        if precision == "fp16" and state.device.type == "cpu":
            precision = "no"
        return state.num_processes, precision
    return 1, args.mixed_precision or "no"


def build_model_card(pipeline, args, num_images, global_step, repo_id=None):
    """The model card (huggingface_hub.ModelCard) of a release, from utils/hub/model_card_template.md."""
    repo_id = repo_id or card_repo_id(args)
    data_short, data_long, dataset_id, synthetic = describe_data(args, num_images)
    world, precision = _run_setup(args)
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = max(1, num_images // world // args.train_batch_size // accumulation)
    unet = pipeline.unet
    if synthetic:
        license_id, license_name = "mit", "MIT"
        license_reason = ("The weights were trained only on synthetic images drawn by the MIT-licensed "
                          "fairface-diffusion code, so they carry the same MIT licence. No FairFace image was used, "
                          "only its label names.")
    else:
        license_id, license_name = "cc-by-4.0", "CC BY 4.0"
        license_reason = ("The weights are trained on FairFace, which is released under CC BY 4.0. As the "
                          "conservative choice they are released under the same licence, so that FairFace's "
                          "attribution requirement travels with them: credit Kärkkäinen & Joo (below) when you share "
                          "the model or work built on it. The fairface-diffusion code itself is MIT-licensed.")
    card_data = huggingface_hub.ModelCardData(
        license=license_id, library_name="diffusers", datasets=[dataset_id] if dataset_id else None,
        tags=["diffusers", "class-conditional", "image-generation", "faces", "fairface", "pytorch"]
        + (["synthetic-data"] if synthetic else []),
        pipeline_tag="unconditional-image-generation")
    context = dict(
        repo_id=repo_id, model_name=repo_id.split("/")[-1], local_dir=repo_id.split("/")[-1],
        data_short=data_short, data_long=data_long, synthetic=synthetic,
        snapshots=bool(args.push_to_hub and args.hub_push_snapshots),
        resolution=unet.config.sample_size, unet_params=f"{sum(p.numel() for p in unet.parameters()):,}",
        encoder_params=f"{sum(p.numel() for p in pipeline.condition_encoder.parameters()):,}",
        block_out_channels=", ".join(map(str, unet.config.block_out_channels)),
        layers_per_block=unet.config.layers_per_block, attention_levels=", ".join(map(str, args.attention_levels)),
        cross_attention_dim=unet.config.cross_attention_dim, num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule, prediction_type=args.prediction_type,
        num_inference_steps=args.num_inference_steps, guidance_scale=f"{args.guidance_scale:g}",
        guidance_interval=list(pipeline.sampling_settings()["guidance_interval"] or (0, args.num_train_timesteps - 1)),
        sample_rows=len(SAMPLE_GRID_CONDITIONS), sample_cols=len(SAMPLE_GRID_SEEDS),
        ages=", ".join(f"{i} = {n}" for i, n in enumerate(AGES)),
        genders=", ".join(f"{i} = {n}" for i, n in enumerate(GENDERS)),
        races=", ".join(f"{i} = {n}" for i, n in enumerate(RACES)), label_table=label_table_markdown(),
        global_step=f"{global_step:,}", epochs=f"{global_step / steps_per_epoch:.3g}", num_images=f"{num_images:,}",
        random_flip=args.random_flip, effective_batch=args.train_batch_size * world * accumulation,
        batch_detail=f"{args.train_batch_size} per device x {world} process(es) x {accumulation} accumulation step(s)",
        learning_rate=f"{args.learning_rate:g}", lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
        adam_weight_decay=f"{args.adam_weight_decay:g}", max_grad_norm=f"{args.max_grad_norm:g}",
        ema=(f"yes, decay up to {args.ema_decay:g} with warm-up; the released weights are the EMA weights"
             if args.use_ema else "no"),
        snr=(f"min-SNR loss weighting (gamma {args.snr_gamma:g})" if args.snr_gamma else "uniform loss weighting"),
        cond_drop_prob=f"{args.cond_drop_prob:g}", attr_drop_prob=f"{args.attr_drop_prob:g}",
        balance=describe_balance(args),
        framing=bool(pipeline.condition_encoder.config.framings),
        precision={"no": "float32", "fp16": "float16 mixed precision", "bf16": "bfloat16 mixed precision"}.get(
            precision, precision) + f"; weights stored as {str(unet.dtype).replace('torch.', '')}",
        seed=args.seed, license_name=license_name, license_reason=license_reason,
    )
    return huggingface_hub.ModelCard.from_template(card_data, template_path=TEMPLATE, **context)


# ------------------------------------------------------------------------------------------------ card edits
def set_card_repo_id(output_dir, repo_id):
    """Put the repo id the push resolved (e.g. with the account name) into the card's commands and snippet."""
    path = os.path.join(output_dir, "README.md")
    if not os.path.isfile(path):
        logger.warning(f"{output_dir} has no model card (README.md); uploading without one")
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    match = _CARD_REPO_ID.search(text)
    if match and match.group(1) != repo_id:
        with open(f"{path}.tmp", "w", encoding="utf-8") as f:
            f.write(text.replace(match.group(1), repo_id))
        os.replace(f"{path}.tmp", path)


def set_card_space(output_dir, space_url):
    """Link the Space from the model card (its "Try it in a browser" section)."""
    path = os.path.join(output_dir, "README.md")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(f"{path}.tmp", "w", encoding="utf-8") as f:
            f.write(_CARD_SPACE.sub(lambda _: f"<!-- fairface-diffusion space --> **On the Hub:** [{space_url}]"
                                    f"({space_url}) serves this page for this model.", text))
        os.replace(f"{path}.tmp", path)
