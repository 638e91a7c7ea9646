"""A web page for a trained fairface-diffusion model: pick age, gender and race, see faces; and the 126-condition atlas.

    python app.py --model fairface-demo                        # then open http://127.0.0.1:7860
    python app.py --model user/repo --host 0.0.0.0 --port 7860   # a Hub repo id; HF_HUB_OFFLINE=1 from the cache

Generate tab: age, gender and race (each a label or "any": the model draws it), number of images, seed,
guidance scale, steps and framing (tight close-ups or wide margins, for a model trained with framing) -> a
gallery; image k uses seed SEED + k, captioned with its condition and seed. Atlas tab: every condition from one
seed (rows: ages; columns: gender x race), in one framing. Guidance and steps start at the model's saved
sampling defaults. The model is loaded once, at start, with this repository's code-free loader. The generate
tab is also the API endpoint ``generate`` (arguments left out take the page's values; docs/app.md):

    from gradio_client import Client
    faces = Client("http://127.0.0.1:7860/").predict(age="20-29", gender="Female", race="any", num_images=4,
                                                     seed=0, api_name="/generate")

Bad input (unknown label, 0 or more than --max_images images, steps out of range, a distilled student's guidance
other than 1) is a message on the page and from the API.
The same file is the app of a Hugging Face Space (``python -m utils.hub OUTPUT_DIR --space``): there --model
defaults to the model that the Space's README.md names (``models: [user/repo]``).
"""

import argparse
import logging
import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry; before gradio is imported
import gradio as gr  # noqa: E402
import torch  # noqa: E402

from utils.cli import DEFAULT_MODEL_DIR, positive_int  # noqa: E402
from utils.model.conditions import GRID_FRAMING, load_pipeline_or_exit, resolve_device_dtype  # noqa: E402
from utils.grid import atlas_grid  # noqa: E402
from utils.labels import (AGES, ATTRIBUTES, FRAMINGS, GENDERS, NUM_CONDITIONS, RACES, decode_condition, describe,  # noqa: E402
                          parse_framing, parse_label)
from utils.model.pipeline import generate  # noqa: E402

ANY = "any"
MAX_STEPS = 100  # more only costs time: the saved default sampler (3 steps) already holds the 6-step fidelity (docs/distillation.md)
logger = logging.getLogger("app")


def default_model():
    """--model's default: $FAIRFACE_MODEL; on a Space, the model its README.md names; else train_fairface.py's."""
    if os.environ.get("FAIRFACE_MODEL"):
        return os.environ["FAIRFACE_MODEL"]
    card = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
    if os.environ.get("SPACE_ID") and os.path.isfile(card):  # SPACE_ID: set by the Hugging Face Spaces runtime
        from huggingface_hub import metadata_load

        models = (metadata_load(card) or {}).get("models") or []
        if models:
            return models[0]
    return DEFAULT_MODEL_DIR


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default=default_model(), help="Pipeline folder or Hub repo id (default: %(default)s).")
    # GRADIO_SERVER_NAME/PORT: what a Space's runtime sets (0.0.0.0:7860) and gradio itself reads.
    add("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="Address to serve on; 0.0.0.0 for other machines (default: %(default)s).")
    add("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)), help="Port (default: %(default)s).")
    add("--max_images", type=positive_int, default=16,
        help="Most images one request may ask for: bounds the work of one click (default: %(default)s).")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda if available, else cpu.")
    args = parser.parse_args(input_args)
    try:
        args.device, args.torch_dtype = resolve_device_dtype(args.device)
    except ValueError as error:
        parser.error(str(error))
    return args


# ------------------------------------------------------------------------------------------------ requests
def check_request(pipe, num_images, seed, guidance_scale, num_inference_steps, max_images):
    """The numbers of a request as (int, int, float, int), or gr.Error with what is wrong and what is allowed."""
    try:
        num_images, seed, steps, guidance = int(num_images), int(seed), int(num_inference_steps), float(guidance_scale)
    except (TypeError, ValueError):
        raise gr.Error("number of images, seed and steps must be whole numbers, guidance scale a number") from None
    if not 1 <= num_images <= max_images:
        raise gr.Error(f"number of images must be 1-{max_images}, got {num_images}")
    if not 0 <= seed < 2 ** 63:
        raise gr.Error(f"seed must be 0 or more, got {seed}")
    most = min(MAX_STEPS, pipe.max_inference_steps)  # fewer for an LCM student: its distillation grid's size
    if not 1 <= steps <= most:
        raise gr.Error(f"steps must be 1-{most} for this model, got {steps}")
    if not 0 <= guidance <= 20:
        raise gr.Error(f"guidance scale must be 0-20 (1 = no guidance), got {guidance:g}")
    distilled = pipe.sampling_settings().get("distilled_guidance_scale")
    if distilled and guidance != 1:  # the API too: the page fixes it at 1 (sampling_controls)
        raise gr.Error(f"guidance scale must be 1 for this distilled model (its teacher's guidance {distilled:g} is "
                       f"in its weights: guiding again would guide twice), got {guidance:g}")
    return num_images, seed, guidance, steps


def check_framing(pipe, framing):
    """The framing to ask for ("tight"/"wide", None for "any"), or gr.Error for an unknown one or a model without."""
    try:
        index = parse_framing(framing)  # None for None, "" and "any"
    except ValueError as error:
        raise gr.Error(str(error)) from None
    if index is not None and not pipe.condition_encoder.config.framings:
        raise gr.Error("this model was trained without the framing condition; leave framing on any")
    return None if index is None else FRAMINGS[index]


def make_generate(pipe, max_images):
    def generate_faces(age, gender, race, num_images, seed, guidance_scale, num_inference_steps, framing=ANY):
        """Faces for one condition (each attribute a label or "any"): a list of (image, caption)."""
        try:
            attributes = tuple(parse_label(name, value) for name, value in zip(ATTRIBUTES, (age, gender, race)))
        except ValueError as error:
            raise gr.Error(str(error)) from None
        num_images, seed, guidance, steps = check_request(pipe, num_images, seed, guidance_scale,
                                                          num_inference_steps, max_images)
        framing = check_framing(pipe, framing)
        seeds = [seed + k for k in range(num_images)]
        images = generate(pipe, [attributes] * num_images, seeds, batch_size=max_images, guidance_scale=guidance,
                          num_inference_steps=steps, framing=framing)
        label = describe(*attributes) + (f", {framing}" if framing else "")
        return [(image, f"{label}, seed {s}") for image, s in zip(images, seeds)]

    return generate_faces


def make_atlas(pipe, max_images):
    def draw_atlas(seed, guidance_scale, num_inference_steps, framing=ANY):
        """All 126 conditions from one seed, as one labelled image."""
        _, seed, guidance, steps = check_request(pipe, 1, seed, guidance_scale, num_inference_steps, max_images)
        framing = check_framing(pipe, framing)
        images = generate(pipe, [decode_condition(c) for c in range(NUM_CONDITIONS)], [seed] * NUM_CONDITIONS,
                          batch_size=max(max_images, 32), guidance_scale=guidance, num_inference_steps=steps,
                          framing=framing)
        return atlas_grid(images, note=f", {framing}" if framing else "")

    return draw_atlas


def sampling_controls(pipe, prefix=""):
    """Guidance and steps sliders at the model's saved sampling defaults (a distilled student's guidance fixed at 1:
    its teacher's is in its weights, guiding again would guide twice), and the framing choice (GRID_FRAMING, wide,
    by default, as make_grid.py, for a model with framing; only "any" for one without)."""
    defaults = pipe.sampling_settings()
    distilled = defaults.get("distilled_guidance_scale")
    guidance = gr.Slider(1, 6, value=1 if distilled else defaults["guidance_scale"], step=0.5,
                         label=f"guidance scale (distilled in: {distilled:g})" if distilled else "guidance scale",
                         interactive=not distilled, elem_id=f"{prefix}guidance")
    most = min(MAX_STEPS, pipe.max_inference_steps)  # as check_request: the API is refused above it too
    steps = gr.Slider(1, most, value=defaults["num_inference_steps"], step=1, elem_id=f"{prefix}steps",
                      label="steps" if most == MAX_STEPS else f"steps (at most {most}: the distillation grid)")
    has_framing = bool(pipe.condition_encoder.config.framings)
    framing = gr.Dropdown([ANY, *FRAMINGS] if has_framing else [ANY], value=GRID_FRAMING if has_framing else ANY,
                          label="framing" if has_framing else "framing (this model was trained without it)",
                          interactive=has_framing, allow_custom_value=True, elem_id=f"{prefix}framing")
    return guidance, steps, framing


# ------------------------------------------------------------------------------------------------ page
def build_demo(pipe, model, max_images):
    size = pipe.unet.config.sample_size
    with gr.Blocks(title="fairface-diffusion") as demo:
        gr.Markdown(f"# fairface-diffusion\n`{model}`: {size}x{size} faces for a chosen age group, gender and "
                    "race (perceived-attribute labels of FairFace). Leave an attribute on *any* and the model "
                    "draws it. Framing: *tight* close-ups (FairFace's 0.25 crops) or *wide* margins (1.25).")
        with gr.Tab("Generate"):
            with gr.Row():
                age = gr.Dropdown([ANY, *AGES], value=ANY, label="age", allow_custom_value=True, elem_id="age")
                gender = gr.Dropdown([ANY, *GENDERS], value=ANY, label="gender", allow_custom_value=True,
                                     elem_id="gender")
                race = gr.Dropdown([ANY, *RACES], value=ANY, label="race", allow_custom_value=True, elem_id="race")
            with gr.Row():
                num_images = gr.Slider(1, max_images, value=min(8, max_images), step=1, label="number of images",
                                       elem_id="num_images")
                seed = gr.Number(0, precision=0, label="seed (image k: seed + k)", elem_id="seed")
                guidance, steps, framing = sampling_controls(pipe)
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            gallery = gr.Gallery(label="faces", columns=8, format="png", object_fit="contain", elem_id="faces")
            button.click(make_generate(pipe, max_images), [age, gender, race, num_images, seed, guidance, steps, framing],
                         gallery, api_name="generate")
        with gr.Tab("Atlas"):
            gr.Markdown("All 126 conditions from one seed: rows are age groups, columns gender x race.")
            with gr.Row():
                atlas_seed = gr.Number(0, precision=0, label="seed", elem_id="atlas_seed")
                atlas_guidance, atlas_steps, atlas_framing = sampling_controls(pipe, prefix="atlas_")
            atlas_button = gr.Button("Draw the atlas", variant="primary", elem_id="draw_atlas")
            atlas = gr.Image(label="atlas", type="pil", format="png", elem_id="atlas")
            atlas_button.click(make_atlas(pipe, max_images), [atlas_seed, atlas_guidance, atlas_steps, atlas_framing], atlas,
                               api_name="atlas")
    return demo


def main(args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    start = time.perf_counter()
    pipe = load_pipeline_or_exit(args.model, device=args.device, dtype=args.torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    logger.info(f"loaded {args.model} on {args.device} in {time.perf_counter() - start:.1f} s")
    demo = build_demo(pipe, args.model, args.max_images)
    # Small tiles are drawn with their real pixels, not blurred by the browser's upscaling.
    demo.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=False,
                css="#faces img, #atlas img {image-rendering: pixelated}")
    return demo


if __name__ == "__main__":
    main(parse_args())
