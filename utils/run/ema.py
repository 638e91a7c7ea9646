"""Exponential moving averages of the weights (diffusers' EMAModel), built and loaded safetensors-only."""

import argparse
import os

from diffusers.training_utils import EMAModel


def build_emas(models, decay, power=2 / 3):
    """{name: EMAModel} of ``models`` ({name: model}) with diffusers' warm-up: the decay at step t is
    min(``decay``, 1 - (1 + t) ** -``power``), so early averages do not drag in the random initialisation."""
    return {name: EMAModel(model.parameters(), decay=decay, use_ema_warmup=True, power=power, model_cls=type(model),
                           model_config=model.config) for name, model in models.items()}


def ema_variant(text):
    """``DECAY:POWER`` (e.g. ``0.9999:0.75``) -> (decay, power); argparse type of the hidden --ema_variants."""
    try:
        decay, power = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DECAY:POWER such as 0.9999:0.75, got {text!r}") from None
    return decay, power


def load_ema(ema, folder):
    """Load an EMAModel saved by ``EMAModel.save_pretrained`` from safetensors only (never unpickles a .bin,
    unlike ``EMAModel.from_pretrained``); the shadow weights end up on the device they were on before."""
    # The EMA's own state (decay, optimization_step, ...) is saved in the model's config.json; read as a dict
    # (from_config(path) is deprecated, to be removed in diffusers 1.0).
    config = ema.model_cls.load_config(folder)
    ema_kwargs = {key: config[key] for key in ema.state_dict() if key != "shadow_params" and key in config}
    model = ema.model_cls.from_pretrained(folder, use_safetensors=True)
    device = ema.shadow_params[0].device
    ema.load_state_dict({**ema_kwargs, "shadow_params": [p.detach().to(device) for p in model.parameters()]})


def load_emas(ema_folders, checkpoint):
    """Load each EMA ({checkpoint subfolder: EMAModel}) that the checkpoint holds; returns the subfolders it
    lacks (a run trained without --use_ema, resumed with it under --allow_resume_changes: utils/run/resume_check.py
    has refused any other such resume before)."""
    missing = []
    for folder, ema in ema_folders.items():
        path = os.path.join(checkpoint, folder)
        if os.path.isdir(path):
            load_ema(ema, path)
        else:
            missing.append(folder)
    return missing


def start_emas_from(ema_folders, missing, models, warn):
    """EMAs a checkpoint lacked start now, from the resumed weights (``models``: {"unet"|"condition_encoder":
    model}), with their warm-up from step 0: not from the random initialisation they were built from."""
    for folder in missing:
        ema = ema_folders[folder]
        model = models["unet" if folder.startswith("unet_") else "condition_encoder"]
        device = ema.shadow_params[0].device
        ema.shadow_params = [p.detach().clone().to(device) for p in model.parameters()]
        ema.optimization_step = 0
    if missing:
        warn(f"the checkpoint has no {', '.join(missing)}: the EMA starts now from the resumed weights")
