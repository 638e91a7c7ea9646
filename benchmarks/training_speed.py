"""Training throughput, peak memory and MFU: fp32 eager baseline vs the fast recipe of ``train_fairface.py``.

What it measures: images/s of the training step of ``train_fairface.py`` (the same utils.run.objective functions,
loss, AdamW settings (fused on CUDA), gradient clipping, LR schedule, and its one per-step host sync, the
finiteness check; loss and grad norm stay on the device, utils.run.step_metrics) on random uint8 batches (the
input pipeline is benchmarks/data_loading.py's business), for the seed's architecture at 128x128 built by
``utils.model.pipeline.build_unet`` (block_out_channels 64 128 256 512, layers_per_block 3, cross-attention at
level 1, cross-attention dim 512), in these variants, alternated round by round in one process:

* **baseline**: fp32, eager, PyTorch's default precision flags (matmul TF32 off; cuDNN convolutions may use
  TF32, as PyTorch allows by default) - ``train_fairface.py`` without speed flags;
* **fast**: ``--allow_tf32`` (matmul and cuDNN TF32), ``channels_last`` UNet weights (on CUDA, as
  train_fairface.py does), ``--mixed_precision bf16`` autocast. SDPA attention (diffusers' default
  ``AttnProcessor2_0``, checked and printed) is on in every variant, the baseline included;
* **fast + compile**: the same plus ``--torch_compile`` (``torch.compile`` of the UNet; on by default on CUDA,
  ``--torch_compile`` to add it elsewhere). Compilation happens in the untimed warm-up; its time is printed.

Reported per variant: images/s (median over rounds) and the ratio to the baseline; peak memory (CUDA:
``max_memory_allocated`` during the variant's steps, less the other variants' resident weights and
optimizer state; CPU: only the process's max RSS, once); MFU = achieved FLOP/s / peak FLOP/s, with the
FLOPs of forward + backward counted by ``torch.utils.flop_counter.FlopCounterMode``
(benchmarks/model_cost.py). The peak is ``--peak_tflops``, by default the dense peak of a known GPU
(``PEAK_TFLOPS``) in the variant's math: bf16 tensor cores for the bf16 variants, TF32 for the fp32 baseline
(PyTorch runs its convolutions, most of the FLOPs, in TF32 by default); none on a CPU (MFU skipped).

``--tiny`` (automatic on a CPU) uses a tiny UNet at 32 px so the run takes a couple of minutes on a laptop CPU;
the GPU targets (>= 3x, MFU >= 35 % on an H100) are for the full model on CUDA.

    python benchmarks/training_speed.py                     # CUDA: seed model, 128 px; CPU: --tiny
    python benchmarks/training_speed.py --tiny --torch_compile
"""

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_lines, markdown_table  # noqa: E402
from model_cost import flops_per_image  # noqa: E402

SEED_MODEL = dict(resolution=128, block_out_channels=[64, 128, 256, 512], layers_per_block=3, attention_levels=[1],
                  cross_attention_dim=512, batch_size=64)
TINY_MODEL = dict(resolution=32, block_out_channels=[32, 64], layers_per_block=1, attention_levels=[1],
                  cross_attention_dim=32, batch_size=16)
# Dense (no sparsity) peaks in TFLOP/s from NVIDIA's data sheets: (bf16 tensor core, TF32 tensor core), by a
# substring of torch.cuda.get_device_name; first match wins.
PEAK_TFLOPS = [("H100 PCIe", (756.0, 378.0)), ("H100 NVL", (835.0, 418.0)), ("H100", (989.4, 494.7)),
               ("H200", (989.4, 494.7)), ("A100", (312.0, 156.0)), ("L40S", (362.0, 183.0))]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default=None, help="Default: cuda if available, else cpu.")
    add("--tiny", action=argparse.BooleanOptionalAction, default=None,
        help="Tiny UNet at 32 px (default: on for CPU, off for CUDA).")
    add("--batch_size", type=int, default=None, help="Default: 64 (seed model) or 16 (tiny).")
    add("--torch_compile", action=argparse.BooleanOptionalAction, default=None,
        help="Add the 'fast + compile' variant (default: on for CUDA, off for CPU).")
    add("--warmup_steps", type=int, default=3, help="Untimed steps per variant before the rounds.")
    add("--steps", type=int, default=None, help="Timed steps per variant per round (default: 20 CUDA, 5 CPU).")
    add("--rounds", type=int, default=3, help="Alternating rounds.")
    add("--peak_tflops", type=float, default=None, help="Peak FLOP/s for MFU, in TFLOP/s, for every variant "
        "(default: the device's dense bf16 / TF32 peak from PEAK_TFLOPS; none on CPU).")
    add("--json", default=None, help="Also write the results to this file (benchmarks/gpu_suite.sh).")
    add("--threads", type=int, default=None, help="CPU: torch threads (default 1: no OpenMP stalls on a shared "
        "CPU; 0 = torch's default).")
    return parser.parse_args(argv)


def default_peak_tflops(device):
    """((bf16 peak, TF32 peak) in TFLOP/s or None, a note saying where it came from)."""
    import torch

    if device.type != "cuda":
        return None, "no default for a CPU (give --peak_tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"{name}: dense peaks bf16 {value[0]:g}, TF32 {value[1]:g} TFLOP/s"
    return None, f"{name}: unknown peak (give --peak_tflops)"


# ---------------------------------------------------------------------------------------------- the step
class Variant:
    """One training setup: its own UNet copy, condition encoder, AdamW and LR schedule (train_fairface.py's)."""

    def __init__(self, name, unet, encoder, device, bf16=False, tf32=False, channels_last=False, compile=False):
        import torch
        from diffusers.optimization import get_scheduler

        self.name, self.device, self.bf16, self.tf32 = name, device, bf16, tf32
        self.unet, self.encoder = copy.deepcopy(unet).to(device), copy.deepcopy(encoder).to(device)
        self.channels_last = channels_last
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.params = list(self.unet.parameters()) + list(self.encoder.parameters())
        # train_fairface.py defaults: lr 2e-4, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8; cosine schedule.
        self.optimizer = torch.optim.AdamW(self.params, lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8,
                                           fused=device.type == "cuda")
        self.lr_scheduler = get_scheduler("cosine", self.optimizer, num_warmup_steps=500, num_training_steps=100_000)
        self.model = torch.compile(self.unet) if compile else self.unet
        self.compiled = compile
        self.rates, self.cpu_rates, self.peak_bytes = [], [], 0
        from utils.run.step_metrics import StepMetrics

        self.metrics = StepMetrics(device)
        self.unet.train()

    def set_precision_flags(self):
        """--allow_tf32 sets both flags; without it, PyTorch's defaults (matmul off, cuDNN on)."""
        import torch

        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = True  # --allow_tf32 sets it; it is also PyTorch's default

    def resident_bytes(self):
        tensors = list(self.params) + [t for state in self.optimizer.state.values() for t in state.values()
                                       if hasattr(t, "element_size")]
        return sum(t.numel() * t.element_size() for t in tensors)


def train_step(variant, noise_scheduler, batch, step, snr_gamma=5.0):
    """The body of train_fairface.py's training loop, for one optimizer step without accumulation (same calls,
    with torch.autocast / backward / clip_grad_norm_ where accelerate wraps them for a single process)."""
    import torch

    from utils.run import objective
    from utils.model.pipeline import denoise

    device = variant.device
    pixels, attributes, weights = batch
    generator = objective.step_generator(0, step, 0, 0, device)
    clean, attributes = objective.prepare_batch(pixels, attributes, generator, True, 0.1, 0.1)
    noise = torch.randn(clean.shape, generator=generator, device=device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator,
                              device=device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.bf16):  # accelerator.autocast()
        prediction = denoise(variant.model, noisy, timesteps, variant.encoder(attributes))
    target = objective.diffusion_target(noise_scheduler, clean, noise, timesteps)
    weights = weights * objective.loss_weights(noise_scheduler, timesteps, snr_gamma)
    loss = objective.weighted_mse(prediction, target, weights)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(variant.params, 1.0)
    if bool(torch.isfinite(grad_norm)):  # the step's one host sync, as in train_fairface.py
        variant.metrics.add(loss, grad_norm)  # on the device; train_fairface.py reads it every --logging_steps
        variant.optimizer.step()
        variant.lr_scheduler.step()
    variant.optimizer.zero_grad(set_to_none=True)


def attention_processors(unet):
    names = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    return names, len(unet.attn_processors)


def main(args):
    import warnings

    import torch
    from diffusers import DDPMScheduler

    warnings.filterwarnings("ignore", message=".*functools.lru_cache.*")  # dynamo on diffusers' version checks

    from utils.model.pipeline import ConditionEncoder, build_unet

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if not cuda:
        threads = 1 if args.threads is None else args.threads
        if threads:
            torch.set_num_threads(threads)
    tiny = (not cuda) if args.tiny is None else args.tiny
    config = dict(TINY_MODEL if tiny else SEED_MODEL)
    batch_size = args.batch_size or config["batch_size"]
    compile_variant = cuda if args.torch_compile is None else args.torch_compile
    steps = args.steps or (20 if cuda else 5)

    torch.manual_seed(0)
    unet = build_unet(config["resolution"], config["block_out_channels"], config["layers_per_block"],
                      config["attention_levels"], config["cross_attention_dim"])
    encoder = ConditionEncoder(embed_dim=config["cross_attention_dim"])
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                    prediction_type="v_prediction")  # train_fairface.py's objective
    processors, num_attention = attention_processors(unet)
    sdpa = processors == ["AttnProcessor2_0"]
    params = sum(p.numel() for p in unet.parameters())
    unet_config = unet.config

    generator = torch.Generator().manual_seed(0)
    res = config["resolution"]
    batch = (torch.randint(0, 256, (batch_size, 3, res, res), dtype=torch.uint8, generator=generator).to(device),
             torch.stack([torch.randint(0, n, (batch_size,), generator=generator) for n in (9, 2, 7)], 1).to(device),
             torch.ones(batch_size, device=device))
    forward, backward = flops_per_image(unet.to(device), encoder.to(device), noise_scheduler, res, device)
    flops_forward, flops_step = forward * batch_size, (forward + backward) * batch_size
    peaks, peak_note = ((args.peak_tflops,) * 2, "--peak_tflops") if args.peak_tflops else default_peak_tflops(device)

    variants = [Variant("baseline: fp32 eager", unet, encoder, device)]
    fast_name = "fast: tf32 + channels_last + bf16 autocast" if cuda else "fast: bf16 autocast (+ tf32 flags)"
    variants.append(Variant(fast_name, unet, encoder, device, bf16=True, tf32=True, channels_last=cuda))
    if compile_variant:
        variants.append(Variant("fast + torch.compile", unet, encoder, device, bf16=True, tf32=True,
                                channels_last=cuda, compile=True))
    del unet, encoder
    if cuda:
        torch.cuda.empty_cache()

    print(f"model: {'tiny' if tiny else 'seed'} UNet {config['block_out_channels']}, layers_per_block "
          f"{config['layers_per_block']}, attention at {config['attention_levels']}, cross-attention dim "
          f"{config['cross_attention_dim']}, condition also in the time embedding: "
          f"{unet_config.class_embed_type == 'projection'}, {res} px, batch {batch_size}: {params / 1e6:.1f} M parameters, "
          f"{flops_forward / 1e9:.2f} GFLOP per forward, {flops_step / 1e9:.2f} GFLOP per training step", flush=True)

    # Warm-up (compilation, cuDNN autotuning, allocator), untimed.
    warmup_seconds = {}
    step = 0
    for variant in variants:
        variant.set_precision_flags()
        start = time.perf_counter()
        for _ in range(args.warmup_steps):
            train_step(variant, noise_scheduler, batch, step)
            step += 1
        warmup_seconds[variant.name] = time.perf_counter() - start
        print(f"warm-up {variant.name}: {warmup_seconds[variant.name]:.1f} s", flush=True)
    if args.json:  # the warm-ups (torch.compile's above all) are known even if a time limit cuts the timing
        with open(args.json, "w") as f:
            json.dump(dict(device_name=torch.cuda.get_device_name(device) if cuda else "CPU", variants=[],
                           warmup_seconds=warmup_seconds, partial=True), f, indent=2)

    for round_index in range(args.rounds):
        order = variants[::-1] if round_index % 2 else variants
        for variant in order:
            variant.set_precision_flags()
            others = sum(v.resident_bytes() for v in variants if v is not variant)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                train_step(variant, noise_scheduler, batch, step)
                step += 1
            if cuda:
                torch.cuda.synchronize(device)
                variant.peak_bytes = max(variant.peak_bytes, torch.cuda.max_memory_allocated(device) - others)
            variant.rates.append(steps * batch_size / (time.perf_counter() - start))
            variant.cpu_rates.append(steps * batch_size / max(time.process_time() - cpu_start, 1e-9))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{v.name.split(':')[0]} {v.rates[-1]:.1f} img/s" for v in order), flush=True)

    base = statistics.median(variants[0].rates)
    base_cpu = statistics.median(variants[0].cpu_rates)
    rows, results = [], []
    for variant in variants:
        rate = statistics.median(variant.rates)
        achieved = flops_step * rate / batch_size
        peak = peaks[0 if variant.bf16 else 1] if peaks else None  # bf16 tensor cores, or TF32 (the baseline)
        mfu = achieved / (peak * 1e12) if peak else None
        memory = f"{variant.peak_bytes / 2**30:.2f} GiB" if cuda else "n/a (CPU)"
        row = [variant.name, f"{rate:.1f}", f"**{rate / base:.2f}x**"]
        if not cuda:
            row.append(f"{statistics.median(variant.cpu_rates) / base_cpu:.2f}x")
        rows.append(row + [memory, f"{achieved / 1e12:.3g}", f"{mfu:.1%} of {peak:g}" if mfu else "n/a"])
        results.append(dict(variant=variant.name, images_per_s=rate, speedup=rate / base, peak_bytes=variant.peak_bytes
                            if cuda else None, achieved_tflops=achieved / 1e12, peak_tflops=peak, mfu=mfu))
    header = ["variant", "images/s", "speed-up"] + ([] if cuda else ["speed-up (CPU time)"]) + [
        "peak memory", "achieved TFLOP/s", "MFU (of peak TFLOP/s)"]
    print()
    print(f"## Training speed ({device.type}, {'tiny' if tiny else 'seed'} model, {res} px, batch {batch_size})")
    print()
    print(markdown_table(header, rows))
    print()
    print(f"Median of {args.rounds} alternating rounds of {steps} steps each after {args.warmup_steps} warm-up steps "
          f"per variant. FLOPs: {flops_step / 1e9:.2f} GFLOP per step (forward + backward, FlopCounterMode). Peaks: "
          f"{peak_note}.")
    if not cuda:
        print(f"Process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (all variants "
              "together; CUDA peak memory per variant needs a GPU). Speed-up (CPU time): the same ratio in this "
              "process's CPU time, insensitive to other jobs on a shared machine.")
    print()
    print("What ran:")
    print(f"- device {device}; variants: " + "; ".join(v.name for v in variants))
    print(f"- SDPA attention: {'yes' if sdpa else 'NO'}, in every variant ({', '.join(processors)} on all "
          f"{num_attention} attention layers: diffusers' default, so train_fairface.py always uses it)")
    print(f"- TF32 (--allow_tf32): {'set for the fast variants' if cuda else 'flags set, but no effect on a CPU'}")
    print(f"- channels_last: {'fast variants (UNet weights, as train_fairface.py does on CUDA)' if cuda else 'not applied: train_fairface.py uses it on CUDA only'}")
    print(f"- bf16 autocast: fast variants ({device.type} autocast)")
    print(f"- torch.compile: {'yes (compile + first steps: ' + format(warmup_seconds[variants[-1].name], '.0f') + ' s warm-up)' if compile_variant else 'not run (--torch_compile to add it)'}")
    print(f"- MFU: {'bf16 variants against the bf16 peak, the fp32 baseline against TF32' if peaks else 'skipped (no peak for this device; --peak_tflops)'}")
    print()
    print("\n".join(machine_lines(device)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), device_name=torch.cuda.get_device_name(device) if cuda else "CPU",
                           model="tiny" if tiny else "seed", resolution=res, batch=batch_size, params=params,
                           flops_per_image=flops_step / batch_size, peak_note=peak_note, variants=results,
                           warmup_seconds=warmup_seconds), f, indent=2)


if __name__ == "__main__":
    main(parse_args())
