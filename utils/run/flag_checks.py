"""Training flags that argparse types cannot check alone: combinations, trackers installed, this machine.

Each bad combination gets a one-line error (``parser.error``: exit 2) before anything is loaded or written.
"""

import importlib.util

# --report_to name -> the pip package that provides it (accelerate's trackers).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet-ml", "mlflow": "mlflow",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                    "trackio": "trackio"}


def check(parser, args):
    """parser.error (exit 2, one line) for flag combinations that cannot work."""
    levels = len(args.block_out_channels)
    if any(level < 0 or level >= levels for level in args.attention_levels):
        parser.error(f"--attention_levels must be between 0 and {levels - 1} (indexes of --block_out_channels)")
    groups = min(32, args.block_out_channels[0])  # utils.model.pipeline.build_unet's GroupNorm groups
    if any(c % groups for c in args.block_out_channels):
        parser.error(f"--block_out_channels must be multiples of {groups} (GroupNorm groups: the first value, at "
                     "most 32)")
    heads = 8  # build_unet's attention heads
    if any(args.block_out_channels[i] % heads for i in {*args.attention_levels, levels - 1}):
        parser.error(f"--block_out_channels at the --attention_levels and the last level must be multiples of {heads}"
                     " (attention heads)")
    if args.resolution % 2 ** (levels - 1):
        parser.error(f"--resolution must be divisible by {2 ** (levels - 1)} for this UNet")
    if args.ema_decay is not None and not args.use_ema:  # (its default, 0.9999, is set after this check)
        parser.error("--ema_decay needs --use_ema")
    if args.hub_push_snapshots and not args.push_to_hub:
        parser.error("--hub_push_snapshots needs --push_to_hub")
    check_tracker(parser, args)


def check_tracker(parser, args):
    """parser.error (exit 2, one line) when --report_to names a tracker whose package is missing (every script
    with trackers)."""
    if args.report_to in ("all", "none"):
        return
    package = TRACKER_PACKAGES[args.report_to]
    if importlib.util.find_spec(args.report_to) is None and not (
            args.report_to == "tensorboard" and importlib.util.find_spec("tensorboardX")):
        parser.error(f"--report_to {args.report_to}: {package} is not installed; run `pip install {package}` or "
                     "pass --report_to none")


def warn_about_precision(accelerator, logger):
    """Say what the mixed precision setting does on this device when that is not what its name says."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        logger.warning("--mixed_precision fp16 on a CPU: accelerate has no float16 autocast there, so this run "
                       "trains in float32 (no grad scaler); --mixed_precision bf16 gives mixed precision on a CPU")
