"""Command-line conventions shared by the scripts: defaults, argument types, one-line errors (exit 2)."""

import argparse
import os
import re
import sys

from .labels import NUM_CONDITIONS

DEFAULT_MODEL_DIR = "fairface-diffusion-128"  # train_fairface.py's --output_dir, sample_fairface.py's --model
# train_fairface.py --demo (and distill_fairface.py --demo, which distils its model): a tiny model on procedurally
# drawn faces (utils/data/demo_data.py); flags given explicitly still win. No EMA and no framing: at the demo's 1008
# steps they cost fidelity, at 4x that budget they did not (docs/measurements.md).
DEMO_DATA_DIR = os.path.join("demo_data", "fairface-synthetic")

DEMO_DEFAULTS = dict(
    dataset_name=DEMO_DATA_DIR, resolution=32, output_dir="fairface-demo", block_out_channels=[32, 64, 64],
    layers_per_block=1, cross_attention_dim=64, train_batch_size=32, num_epochs=16, learning_rate=1e-3,
    lr_warmup_steps=50, save_model_epochs=4, save_images_epochs=4, checkpointing_steps=200,
    preprocess_cache=os.path.join("demo_data", "pixel-cache"), random_flip=True, use_ema=False, framing_condition=False,
)

# --demo --demo_distribution fairface: 16,128 faces at FairFace's frequencies (utils/data/demo_data.py), 504 steps an
# epoch; 2 epochs are the demo's budget of 1008 steps.
DEMO_LONG_TAILED_DIR = DEMO_DATA_DIR + "-long-tailed"
LONG_TAILED_DEMO_DEFAULTS = dict(dataset_name=DEMO_LONG_TAILED_DIR, output_dir="fairface-demo-long-tailed", num_epochs=2,
                                 save_model_epochs=1, save_images_epochs=1)


def fail(message, prog=None):
    """argparse-style: ``prog: error: message`` on stderr, exit status 2, no traceback."""
    prog = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "fairface")
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_or_fail(what, name, loader):
    """Run ``loader()``; a missing or unusable model becomes a one-line error (exit 2)."""
    import os

    if name.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(name)):
        fail(f"cannot load {what} {name!r}: no such folder")
    try:
        return loader()
    except (OSError, ValueError, KeyError, ImportError) as error:
        fail(f"cannot load {what} {name!r}: {first_line(error)}")


def parse_seeds(text):
    """EDM-style seed list: ``"0-7,12"`` -> [0, 1, ..., 7, 12]."""
    seeds = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise argparse.ArgumentTypeError(f"invalid seed list {text!r}; expected e.g. 0-7,12")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise argparse.ArgumentTypeError(f"invalid seed range {part.strip()!r}: end before start")
        seeds.extend(range(first, last + 1))
    return seeds


def _number(name, convert, ok, requirement):
    """An argparse type: ``convert(text)``, refused unless finite and ``ok`` ("must be <requirement>, got ...")."""
    def parse(text):
        value = convert(text)
        if value != value or value in (float("inf"), float("-inf")) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = name  # argparse's "invalid <name> value" for text that is no number at all
    return parse


positive_int = _number("positive_int", int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number("nonnegative_int", int, lambda v: v >= 0, "0 or more")
positive_float = _number("positive_float", float, lambda v: v > 0, "a positive number")
nonnegative_float = _number("nonnegative_float", float, lambda v: v >= 0, "0 or more")
finite_float = _number("finite_float", float, lambda v: True, "a finite number")
probability = _number("probability", float, lambda v: 0.0 <= v <= 1.0, "between 0 and 1")
percentile = _number("percentile", float, lambda v: 0.0 < v < 100.0, "between 0 and 100")
condition_id = _number("condition_id", int, lambda v: 0 <= v < NUM_CONDITIONS,
                       f"a condition id 0-{NUM_CONDITIONS - 1} (age*14 + gender*7 + race)")
beta = _number("beta", float, lambda v: 0.0 <= v < 1.0, "at least 0 and below 1")  # an Adam beta


class GuidanceInterval(argparse.Action):
    """``--guidance_interval LO HI``: timesteps 0 <= LO <= HI (``0 inf``: every step); else one line, exit 2."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=2, metavar=("LO", "HI"), **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            low, high = (float(value) for value in values)
        except ValueError:
            low = high = float("nan")
        if not 0 <= low <= high:
            fail(f"{option_string} needs two timesteps 0 <= LO <= HI ('0 inf': every step), got {' '.join(values)}",
                 prog=parser.prog)
        setattr(namespace, self.dest, (low, high))
