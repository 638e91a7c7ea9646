"""What one training image costs: parameters, FLOPs counted by torch (not guessed), and peak memory.

The model is train_fairface.py's, built by ``utils.model.pipeline.build_unet`` with the script's defaults (the seed's
architecture: block_out_channels 64 128 256 512, layers_per_block 3, cross-attention at level 1, dim 512) at
``--resolution`` (128), plus its ConditionEncoder. FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` around
the forward and, separately, the backward of the training loss of one image (matmuls, convolutions and the
attention kernels; element-wise work is not counted, as usual for MFU). FLOPs are linear in the batch, so one
image is counted. Peak memory: one optimizer step (forward, backward, AdamW) at ``--batch_size`` (CUDA:
``max_memory_allocated``; CPU: growth of the process's peak resident memory during the step, a rougher
figure that includes the allocator's slack).

    python benchmarks/model_cost.py                         # seed model, 128 px, batch 64 on CUDA / 4 on CPU
    python benchmarks/model_cost.py --resolution 32 --tiny  # the CPU-sized dry run (benchmarks/gpu_suite.sh --tiny)
"""

import argparse
import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, machine_lines, markdown_table  # noqa: E402,F401  (REPO: puts the repository on sys.path)

TINY_MODEL = dict(block_out_channels=[32, 64], layers_per_block=1, attention_levels=[1], cross_attention_dim=32)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--resolution", type=int, default=128)
    add("--tiny", action="store_true", help="A 1 M-parameter UNet instead of the seed's (CPU dry runs).")
    add("--batch_size", type=int, nargs="+", default=None,
        help="Batches of the peak-memory steps, one measurement each (default 64 CUDA, 4 CPU).")
    add("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
        help="Peak memory in fp32 and/or under bf16 autocast (--mixed_precision bf16), each at every batch.")
    add("--device", default=None, help="Default: cuda if available, else cpu.")
    add("--json", default=None, help="Also write the numbers to this file (benchmarks/gpu_suite.sh).")
    return parser.parse_args(argv)


def model_config(tiny):
    """(block_out_channels, layers_per_block, attention_levels, cross_attention_dim): train_fairface.py's defaults."""
    if tiny:
        return TINY_MODEL
    sys.path.insert(0, REPO)
    from train_fairface import parse_args as train_args

    defaults = train_args([])
    return dict(block_out_channels=defaults.block_out_channels, layers_per_block=defaults.layers_per_block,
                attention_levels=defaults.attention_levels, cross_attention_dim=defaults.cross_attention_dim)


def build(resolution, config, device):
    import torch

    from utils.model.pipeline import ConditionEncoder, build_unet

    torch.manual_seed(0)
    unet = build_unet(resolution, config["block_out_channels"], config["layers_per_block"],
                      config["attention_levels"], config["cross_attention_dim"]).to(device)
    encoder = ConditionEncoder(embed_dim=config["cross_attention_dim"]).to(device)
    return unet, encoder


def training_loss(unet, encoder, noise_scheduler, batch, resolution, device, step=0):
    """train_fairface.py's loss on a random uint8 batch (flip, condition dropout, min-SNR v-prediction)."""
    import torch

    from utils.run import objective
    from utils.model.pipeline import denoise

    generator = torch.Generator().manual_seed(step)
    pixels = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8, generator=generator)
    attributes = torch.stack([torch.randint(0, n, (batch,), generator=generator) for n in (9, 2, 7)], 1)
    step_generator = objective.step_generator(0, step, 0, 0, device)
    clean, attributes = objective.prepare_batch(pixels.to(device), attributes.to(device), step_generator, True,
                                               0.1, 0.1)
    noise = torch.randn(clean.shape, generator=step_generator, device=device)
    timesteps = torch.randint(0, 1000, (batch,), generator=step_generator, device=device)
    prediction = denoise(unet, noise_scheduler.add_noise(clean, noise, timesteps), timesteps, encoder(attributes))
    target = objective.diffusion_target(noise_scheduler, clean, noise, timesteps)
    weights = objective.loss_weights(noise_scheduler, timesteps, 5.0)
    return objective.weighted_mse(prediction, target, weights)


def flop_counter():
    """FlopCounterMode that also counts PyTorch's CPU flash-attention kernels (not in its own table)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, **kwargs: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad_out, q, k, v, *args, **kwargs: fc.sdpa_backward_flop_count(grad_out, q, k, v),
    }
    return fc.FlopCounterMode(display=False, custom_mapping=cpu_attention)


def flops_per_image(unet, encoder, noise_scheduler, resolution, device):
    """(forward FLOPs, backward FLOPs) of the training loss of one image, counted by FlopCounterMode."""
    with flop_counter() as counter:
        loss = training_loss(unet, encoder, noise_scheduler, 1, resolution, device)
    forward = counter.get_total_flops()
    with flop_counter() as counter:
        loss.backward()
    unet.zero_grad(set_to_none=True)
    encoder.zero_grad(set_to_none=True)
    return forward, counter.get_total_flops()


def peak_step_bytes(unet, encoder, noise_scheduler, resolution, batch, device, bf16=False):
    """Peak memory of one optimizer step at ``batch`` (see the module docstring for what is measured); None when
    it does not fit in the GPU's memory."""
    import torch

    params = list(unet.parameters()) + list(encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-2, fused=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _rss_bytes()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = training_loss(unet, encoder, noise_scheduler, batch, resolution, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        optimizer.zero_grad(set_to_none=True)
        loss = optimizer = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.empty_cache()
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return max(peak - before, 0)


def peak_note(device):
    if device.type == "cuda":
        return "CUDA max_memory_allocated (weights, AdamW state included)"
    return "CPU: growth of the process's peak RSS over the step (AdamW state included)"


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(args):
    import torch
    from diffusers import DDPMScheduler

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batches = args.batch_size or [64 if device.type == "cuda" else 4]
    config = model_config(args.tiny)
    unet, encoder = build(args.resolution, config, device)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                    prediction_type="v_prediction")
    unet_params = sum(p.numel() for p in unet.parameters())
    encoder_params = sum(p.numel() for p in encoder.parameters())
    forward, backward = flops_per_image(unet, encoder, noise_scheduler, args.resolution, device)
    peaks = []
    for precision in args.precision:
        for batch in sorted(batches):
            fits = not peaks or peaks[-1]["peak_bytes"] is not None or peaks[-1]["precision"] != precision
            peak = peak_step_bytes(unet, encoder, noise_scheduler, args.resolution, batch, device,
                                   bf16=precision == "bf16") if fits else None  # a larger batch fits no better
            if peaks and device.type != "cuda":
                peak = "n/a"  # a process's peak RSS only grows: on a CPU only the first step is its own
            peaks.append(dict(precision=precision, batch=batch, peak_bytes=peak))
    first = peaks[0]
    result = dict(model="tiny" if args.tiny else "seed", resolution=args.resolution, unet_params=unet_params,
                  encoder_params=encoder_params, forward_flops=forward, backward_flops=backward,
                  training_flops_per_image=forward + backward, peak_batch=first["batch"],
                  peak_bytes=first["peak_bytes"], peaks=peaks, peak_note=peak_note(device), device=str(device),
                  config=config)
    rows = [["UNet parameters", f"{unet_params / 1e6:.1f} M"], ["condition encoder parameters", f"{encoder_params:,}"],
            ["forward FLOPs per image", f"{forward / 1e9:.1f} GFLOP"],
            ["backward FLOPs per image", f"{backward / 1e9:.1f} GFLOP"],
            ["training FLOPs per image (forward + backward)", f"{(forward + backward) / 1e9:.1f} GFLOP"],
            *([f"peak memory, one AdamW step at batch {p['batch']}, {p['precision']}",
               f"{p['peak_bytes'] / 2**30:.2f} GiB" if isinstance(p["peak_bytes"], int) else
               "out of memory" if p["peak_bytes"] is None else "n/a (CPU: measured for the first step only)"]
              for p in peaks)]
    print(f"## Training cost: {result['model']} UNet {config['block_out_channels']}, layers_per_block "
          f"{config['layers_per_block']}, attention at {config['attention_levels']}, {args.resolution} px")
    print()
    print(markdown_table(["quantity", "value"], rows))
    print()
    print(f"FLOPs: torch.utils.flop_counter.FlopCounterMode (matmul, convolution, attention kernels). Peak memory: "
          f"{peak_note(device)}.")
    print("\n".join(machine_lines(device)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(parse_args())
