"""What to sample and how, from the command line: shared by sample_fairface.py, make_grid.py and evaluate_fairface.py.

Conditions come either as ids (``--condition 42``, ``0 1 2``, ``100-125`` or ``all``) or as attributes
(``--age 20-29 --gender female --race "East Asian"``, any of them left out = unknown); never both. Each becomes a
``Condition``: the attributes for the pipeline, a file-name prefix and a label for people. Errors are
ValueErrors with a one-line message that lists the valid values; the scripts turn them into ``fail()``.
"""

import os
import re
from typing import NamedTuple, Optional, Tuple

import torch

from ..cli import DEFAULT_MODEL_DIR, GuidanceInterval, fail, positive_int
from ..labels import FRAMINGS, NUM_CONDITIONS, decode_condition, describe, parse_label, slug
from .pipeline import LEGACY_SAMPLING_DEFAULTS, SAMPLING_DEFAULTS, SCHEDULERS, load_pipeline

DEFAULT_GUIDANCE_SCALE = SAMPLING_DEFAULTS["guidance_scale"]  # train_fairface.py's --guidance_scale
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Condition(NamedTuple):
    attributes: Tuple[Optional[int], Optional[int], Optional[int]]  # (age, gender, race), None = unknown
    name: str  # file-name prefix: cond042_20-29_male_east-asian, or anyage_female_black
    label: str  # for people: "42: 20-29 Male East Asian", or "any age Female Black"
    id: Optional[int] = None  # the condition id when given by id


def parse_condition_ids(tokens):
    """``["all"]`` -> 0..125; ``["42", "0-13", "7,9"]`` -> ids in the order given (ranges inclusive), no repeats."""
    ids = []
    for part in (p.strip().lower() for token in tokens for p in str(token).split(",")):
        if part == "all":
            ids += range(NUM_CONDITIONS)
            continue
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        first, last = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (-1, -1)
        if not match or last < first or last >= NUM_CONDITIONS:
            raise ValueError(f"invalid condition {part!r}; valid: ids 0-{NUM_CONDITIONS - 1}, ranges such as 0-13, "
                             "or 'all'")
        ids += range(first, last + 1)
    if not ids:
        raise ValueError("no conditions given")
    return list(dict.fromkeys(ids))


def condition_from_id(condition_id):
    attributes = decode_condition(condition_id)
    return Condition(attributes, f"cond{condition_id:03d}_{slug(*attributes)}",
                     f"{condition_id}: {describe(*attributes)}", condition_id)


def condition_from_attributes(age=None, gender=None, race=None):
    """Attribute names (None = unknown) -> Condition; ValueError naming the flag and the valid labels."""
    attributes = []
    for attribute, value in (("age", age), ("gender", gender), ("race", race)):
        try:
            attributes.append(parse_label(attribute, value))
        except ValueError as error:
            raise ValueError(f"--{attribute}: {error}") from None
    return Condition(tuple(attributes), slug(*attributes), describe(*attributes))


def sample_filename(condition, seed, framing=None):
    """``cond042_20-29_male_east-asian_seed0003.png`` / ``anyage_female_black_tight_seed0000.png`` (with a framing)."""
    return f"{condition.name}{f'_{framing}' if framing else ''}_seed{int(seed):04d}.png"


# The one framing of grids and the demo app for models trained with framing: asked for wide, the 1008-step demo
# models recovered all three attributes in 92.1 % / 97.6 % of samples (seeds 0 / 1), asked for tight 85.7 % / 91.3 %
# (docs/measurements.md, "Framing and EMA"); both framings were drawn 100 % of the time.
GRID_FRAMING = "wide"


def add_framing_arg(parser, default_help="the model's choice"):
    parser.add_argument("--framing", choices=[*FRAMINGS, "any"], default=None,
                        help=f"tight (FairFace config 0.25) or wide (1.25) margin around the face, for models trained "
                             f"with framing; any = the model's choice (default: {default_help}).")


def framing_or_exit(pipe, framing, model):
    """The framing to ask ``pipe`` for (None for "any"/None); one-line error if the model has no framing condition."""
    framing = None if framing == "any" else framing
    if framing and not pipe.condition_encoder.config.framings:
        fail(f"{model!r} was trained without the framing condition; leave --framing out")
    return framing


def add_condition_args(parser):
    group = parser.add_argument_group("conditions (ids or attributes, not both)")
    group.add_argument("--condition", "--conditions", dest="condition", nargs="+", metavar="ID",
                       help=f"Condition ids 0-{NUM_CONDITIONS - 1} (age*14 + gender*7 + race), ranges such as 0-13, "
                            "or 'all'.")
    group.add_argument("--age", help="Age group: 0-2, 3-9, 10-19, 20-29, 30-39, 40-49, 50-59, 60-69, 70+ "
                                     "(left out = any age, drawn by the model).")
    group.add_argument("--gender", help="Male or Female (left out = any).")
    group.add_argument("--race", help='East Asian, Indian, Black, White, "Middle Eastern", Latino_Hispanic, '
                                      '"Southeast Asian"; any case/spacing (left out = any).')


def conditions_from_args(args):
    """The Conditions asked for by add_condition_args' flags; ValueError for bad or contradictory flags."""
    attributes = {name: getattr(args, name) for name in ("age", "gender", "race")}
    given = [f"--{name}" for name, value in attributes.items() if value is not None]
    if args.condition and given:
        raise ValueError(f"give condition ids (--condition) or attributes ({', '.join(given)}), not both")
    if args.condition:
        return [condition_from_id(i) for i in parse_condition_ids(args.condition)]
    if not given:
        raise ValueError(f"say what to sample: --condition ID [ID ...] (0-{NUM_CONDITIONS - 1} or all), or any of "
                         "--age/--gender/--race (e.g. --gender female; --gender any for no condition at all)")
    return [condition_from_attributes(**attributes)]


def add_sampling_args(parser, batch_size=16):
    """Sampler flags. Left out, --scheduler/--num_inference_steps/--guidance_scale/--guidance_interval take the
    model's saved ones (``FairFacePipeline.sampling_settings``): models trained now save the measured best."""
    new, old = SAMPLING_DEFAULTS, LEGACY_SAMPLING_DEFAULTS
    group = parser.add_argument_group("sampler (default: the model's own settings)")
    group.add_argument("--scheduler", choices=list(SCHEDULERS), default=None,
                       help="Sampler, built from the model's saved noise schedule (default: the saved one, dpm++).")
    group.add_argument("--num_inference_steps", type=positive_int, default=None,
                       help=f"Denoising steps (default: the model's; {new['num_inference_steps']} for models trained "
                            f"now, {old['num_inference_steps']} for older ones).")
    group.add_argument("--guidance_scale", type=float, default=None,
                       help=f"Classifier-free guidance; 1 turns it off (default: the model's, "
                            f"{new['guidance_scale']:g}).")
    group.add_argument("--guidance_interval", action=GuidanceInterval, default=None,
                       help="Guide only the steps whose timestep t has LO <= t <= HI (0 = clean, 999 = noise); the "
                            "others cost half (default: the model's; {} for models trained now, every step for older "
                            "ones; '0 inf' = every step).".format("%g-%g" % new["guidance_interval"]
                                                                   if new["guidance_interval"] else "every step"))
    group.add_argument("--batch_size", type=positive_int, default=batch_size,
                       help="Images per UNet batch; the images do not depend on it, up to float rounding "
                            "(default: %(default)s).")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="cuda if available, else cpu.")
    group.add_argument("--dtype", choices=list(DTYPES), default=None, help="Default: float16 on CUDA, float32 on CPU.")


def sampling_settings(pipe, args):
    """The pipeline call's sampler settings: the add_sampling_args flags given, else the pipeline's defaults. Only
    the call's arguments: a student's saved distilled_guidance_scale is a record of its training (app.py shows
    it), not a call argument."""
    try:
        settings = pipe.sampling_settings(num_inference_steps=args.num_inference_steps,
                                          guidance_scale=args.guidance_scale, guidance_interval=args.guidance_interval)
    except ValueError as error:  # e.g. more steps than an LCM student's grid holds: one line, exit 2
        fail(f"--{error}")
    return {name: settings[name] for name in SAMPLING_DEFAULTS}  # the call's settings, as every release saves


def resolve_device_dtype(device, dtype=None):
    """(torch.device, torch.dtype) for the flags; ValueError when the device is not there."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    if dtype is None:
        dtype = "float16" if device.type == "cuda" else "float32"
    return device, DTYPES[dtype]


def load_pipeline_or_exit(model, device=None, dtype=None, scheduler=None):
    """utils.model.pipeline.load_pipeline, with a one-line error (exit 2) instead of a traceback when it cannot load."""
    if not os.path.isdir(model) and not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        fail(f"no model at {model!r}: train one with `accelerate launch train_fairface.py` (writes "
             f"{DEFAULT_MODEL_DIR}/; add --demo for a quick offline one in fairface-demo/), or pass "
             "--model <local dir or user/repo>")
    try:
        return load_pipeline(model, device=device, dtype=dtype, scheduler=scheduler)
    except (OSError, ValueError) as error:  # not a pipeline, pickled weights only, unknown repo, offline, ...
        where = "" if os.path.isdir(model) else "not a local folder, and as a Hub repo: "
        fail(f"cannot load {model!r}: {where}{(str(error).strip().splitlines() or [type(error).__name__])[0]}")
