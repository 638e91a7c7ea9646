"""Command-line conventions shared by the scripts: defaults, argument types, one-line errors (exit 2)."""

import argparse
import re
import sys

DEFAULT_MODEL_DIR = "fairface-diffusion-128"  # train_fairface.py's --output_dir, sample_fairface.py's --model


def fail(message, prog=None):
    """argparse-style: ``prog: error: message`` on stderr, exit status 2, no traceback."""
    prog = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "fairface")
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


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


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def probability(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _finite(text):
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text):
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonnegative_float(text):
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def finite_float(text):
    return _finite(text)


def beta(text):
    """An Adam beta: 0 <= beta < 1."""
    value = _finite(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value
