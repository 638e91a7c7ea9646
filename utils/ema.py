"""Exponential moving averages of the weights (diffusers' EMAModel), built and loaded safetensors-only."""

import argparse

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
