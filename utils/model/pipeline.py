"""The model: a condition encoder, a UNet2DConditionModel, and the pipeline that samples from them.

The condition is three attribute tokens (age, gender, race) given to the UNet by cross-attention. Each
attribute has one learned "unknown" entry besides its labels, so any attribute can be left out at sampling
time, and the fully unknown condition is the null condition of classifier-free guidance (DiT's label
embedder, one table per attribute instead of one per class id).

The encoder is one ``nn.Embedding`` whose rows are laid out ``[ages..., unknown age, genders..., unknown
gender, races..., unknown race]``: anyone can rebuild the tokens from ``condition_encoder/*.safetensors``
with three row look-ups, without this repository (the model card shows how).

Models trained with framing (utils/labels.py: tight = FairFace config 0.25, wide = 1.25) have a fourth token,
SDXL-style micro-conditioning: its rows ``[tight, wide, unknown framing]`` are appended after the race rows,
so the three attribute look-ups stay where they were. Encoders saved without ``framings`` give three tokens.
"""

import inspect
import json
import math
import os

import diffusers
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DiffusionPipeline,
                       DPMSolverMultistepScheduler, ImagePipelineOutput, LCMScheduler, ModelMixin, SchedulerMixin,
                       UNet2DConditionModel, UniPCMultistepScheduler)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..labels import AGES, GENDERS, RACES, UNKNOWN, decode_condition, parse_framing, parse_label

# A release committed but not yet moved into the root of --output_dir (utils/hub/release.py); loaded instead.
PENDING_RELEASE = ".release-new"
# The list of a release's entries, replaced last when a release moves into the root (utils/hub/release.py): its
# identity (inode, times) changes with every release, so a reader compares it before and after reading.
RELEASE_MANIFEST = ".release-files.json"
RELEASE_READ_ATTEMPTS = 5  # a reader that raced this many releases in a row gives up (one line)
DEFAULT_SCHEDULER = "dpm++"  # saved with every snapshot/release, so from_pretrained samples fast by default
# The files of a saved pipeline that load_pipeline reads: configs and safetensors, never code or pickles.
PIPELINE_FILES = ["model_index.json", "unet/*.json", "unet/*.safetensors", "condition_encoder/*.json",
                  "condition_encoder/*.safetensors", "scheduler/*.json"]
# Sampling defaults saved with every pipeline trained now (model_index.json "sampling_defaults"); __call__ falls
# back to them. Chosen by benchmarks/sampler_sweep.py (docs/distillation.md): DPM-Solver++ 3 steps with guidance 2
# on every step (6 UNet evaluations per image) kept the finished demo model's fidelity within the 95 % interval of 6
# steps (97.6 % vs 98.0 % all three, 2x faster); 2 steps fell to 92.5 %, guidance 1.5 or 3 at 3 steps lost 9
# points. guidance_interval: timesteps [lo, hi]
# (0 = clean, num_train_timesteps - 1 = pure noise) whose steps get classifier-free guidance; the others make only
# the conditional prediction, half the UNet work (Kynkaanniemi et al. 2024).
# A distilled student (distill_fairface.py) saves guidance_scale 1 (one UNet evaluation per step: the teacher's
# guidance is baked into its weights), its few-step sampler as the scheduler (DDIM through its segment starts, the
# multistep consistency default; LCMScheduler for one segment; the teacher's own after guidance distillation), and
# distilled_guidance_scale (the teacher's guidance it learned), which __call__ does not read: guiding the student
# again would guide twice.
SAMPLING_DEFAULTS = dict(num_inference_steps=3, guidance_scale=2.0, guidance_interval=None)
# Pipelines saved before sampling defaults existed (no "sampling_defaults"): DPM-Solver++ 25, guidance 2 every step.
LEGACY_SAMPLING_DEFAULTS = dict(num_inference_steps=25, guidance_scale=2.0, guidance_interval=None)
# Fast samplers by name; each is built from the scheduler config saved with the model (same betas and
# prediction type as training). dpm++ is the default: it gave the best samples at ~25 steps (README).
SCHEDULERS = {
    "dpm++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "lcm": LCMScheduler,  # one-segment consistency students (distill --num_segments 1; utils/model/consistency.py)
}


class ConditionEncoder(ModelMixin, ConfigMixin):
    """(age, gender, race[, framing]) indices, -1 for unknown -> (batch, tokens, embed_dim) cross-attention tokens.

    ``framings=None`` (every encoder saved before framing existed): three tokens, a framing column is ignored.
    """

    @register_to_config
    def __init__(self, embed_dim: int = 512, ages=AGES, genders=GENDERS, races=RACES, framings=None):
        super().__init__()
        sizes = [len(ages), len(genders), len(races)] + ([len(framings)] if framings else [])
        offsets, start = [], 0
        for size in sizes:
            offsets.append(start)
            start += size + 1  # + the attribute's "unknown" row
        self.register_buffer("sizes", torch.tensor(sizes), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets), persistent=False)
        self.embedding = nn.Embedding(start, embed_dim)

    @property
    def num_tokens(self):
        return len(self.sizes)

    def forward(self, attributes):
        """``attributes``: long tensor (batch, 3 or 4) of label indices, ``-1`` where unknown; a missing framing
        column is unknown framing, a framing column is dropped for an encoder without framing."""
        if attributes.shape[1] < self.num_tokens:
            attributes = nn.functional.pad(attributes, (0, self.num_tokens - attributes.shape[1]), value=UNKNOWN)
        attributes = attributes[:, : self.num_tokens]
        attributes = torch.where(attributes < 0, self.sizes, attributes)  # -1 -> the unknown row
        return self.embedding(attributes + self.offsets)

    @property
    def labels(self):
        labels = {"age": list(self.config.ages), "gender": list(self.config.genders), "race": list(self.config.races)}
        return {**labels, "framing": list(self.config.framings)} if self.config.framings else labels


def build_unet(resolution, block_out_channels=(64, 128, 256, 512), layers_per_block=3, attention_levels=(1,),
               cross_attention_dim=512, attention_head_dim=8, condition_in_time_embedding=False, num_tokens=3):
    """The seed's UNet2DConditionModel: cross-attention at ``attention_levels`` (0 = highest resolution).

    ``condition_in_time_embedding`` also adds the ``num_tokens`` condition tokens, projected, to the timestep embedding
    (diffusers' ``class_embed_type="projection"``), so every ResNet block sees the condition, as DiT's
    label embedding does. Off by default: on the demo data cross-attention alone learned the attributes faster
    (README: measured).
    """
    levels = range(len(block_out_channels))
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(levels)),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim, norm_num_groups=min(32, block_out_channels[0]),
        class_embed_type="projection" if condition_in_time_embedding else None,
        projection_class_embeddings_input_dim=num_tokens * cross_attention_dim if condition_in_time_embedding else None,
    )


def denoise(unet, sample, timestep, tokens):
    """One UNet prediction for condition tokens (batch, tokens, dim): cross-attention keys, and the flattened tokens
    as the time-embedding condition when the UNet has one."""
    config = getattr(unet, "module", unet).config  # through a DistributedDataParallel wrapper
    class_labels = tokens.flatten(1) if config.class_embed_type == "projection" else None
    return unet(sample, timestep, encoder_hidden_states=tokens, class_labels=class_labels).sample


def guided_prediction(unet, sample, timestep, tokens, null_tokens, guidance_scale):
    """Classifier-free guidance, ``uncond + scale * (cond - uncond)``: the null and conditional predictions from
    one batched UNet call. ``timestep``: one for the batch, or one per image (distill_fairface.py's teacher)."""
    timesteps = torch.cat([timestep] * 2) if torch.is_tensor(timestep) and timestep.dim() else timestep
    uncond, cond = denoise(unet, torch.cat([sample] * 2), timesteps, torch.cat([null_tokens, tokens])).chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def conditions_to_tensor(conditions):
    """[(age, gender, race) with None for unknown, ...] -> long tensor (n, 3) with -1 for unknown."""
    return torch.tensor([[UNKNOWN if v is None else int(v) for v in c] for c in conditions], dtype=torch.long)


def resolve_conditions(condition_ids=None, age=None, gender=None, race=None):
    """Conditions as a list of (age, gender, race) tuples (None = unknown) from ids or attribute names."""
    if condition_ids is not None:
        if any(v is not None for v in (age, gender, race)):
            raise ValueError("give condition ids or attributes, not both")
        ids = [condition_ids] if isinstance(condition_ids, int) else list(condition_ids)
        return [decode_condition(i) for i in ids]
    return [(parse_label("age", age), parse_label("gender", gender), parse_label("race", race))]


def _strict_json_defaults(sampling_defaults, scheduler):
    """Sampling defaults that strict JSON can hold: a guidance interval's ``inf`` (``--guidance_interval 0 inf``)
    becomes the last training timestep, which guides the same steps; json.dump would write ``Infinity``, which
    the Hub's and JavaScript's JSON parsers reject."""
    interval = (sampling_defaults or {}).get("guidance_interval")
    if interval is None or all(math.isfinite(float(v)) for v in interval):
        return sampling_defaults
    last = float(scheduler.config.num_train_timesteps - 1)
    low, high = float(interval[0]), float(interval[1])
    return {**sampling_defaults, "guidance_interval": [low, high if math.isfinite(high) else max(low, last)]}


class FairFacePipeline(DiffusionPipeline):
    """Attribute-conditioned face generation: ``pipe(condition_ids=[42], num_inference_steps=25).images``."""

    model_cpu_offload_seq = "condition_encoder->unet"
    _callback_tensor_inputs = ["latents"]

    # condition_encoder: ModelMixin, not ConditionEncoder: loaded with trust_remote_code, the encoder comes from its
    # own module file (condition_encoder/), another class object than the one in this file; diffusers warns then.
    def __init__(self, unet: UNet2DConditionModel, scheduler, condition_encoder: ModelMixin,
                 sampling_defaults: dict = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, condition_encoder=condition_encoder)
        # Saved in model_index.json, so from_pretrained gets them; None (older releases): LEGACY_SAMPLING_DEFAULTS.
        self.register_to_config(sampling_defaults=_strict_json_defaults(sampling_defaults, scheduler))

    @property
    def labels(self):
        return self.condition_encoder.labels

    # diffusers' callback convention (its pipelines and PipelineTesterMixin.test_callback_cfg): a
    # callback_on_step_end reads these, and may change the guidance of the remaining steps by setting
    # ``pipe._guidance_scale`` (diffusers' CFG cut-off callbacks set 0.0); each step reads it anew.
    @property
    def guidance_scale(self):
        return getattr(self, "_guidance_scale", None)

    @property
    def do_classifier_free_guidance(self):
        """As in diffusers: guidance only above 1 (1, or a callback's 0.0, gives the conditional prediction alone)."""
        return self.guidance_scale is not None and self.guidance_scale > 1

    @property
    def num_timesteps(self):
        return getattr(self, "_num_timesteps", None)

    @property
    def interrupt(self):
        """Set ``pipe._interrupt = True`` in a callback to skip the remaining steps (diffusers' convention)."""
        return getattr(self, "_interrupt", False)

    def set_scheduler(self, name, **options):
        """Swap in a sampler by name (a key of ``SCHEDULERS``), keeping the trained noise schedule;
        ``options`` override scheduler config entries (e.g. ``solver_order=3``)."""
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
        self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config, **options)
        return self

    @property
    def max_inference_steps(self):
        """The most steps the sampler takes: an LCMScheduler's distillation grid (its ``original_inference_steps``,
        distill's --num_ddim_timesteps: its steps are a subset of that grid), else every training timestep."""
        config = self.scheduler.config
        return config.get("original_inference_steps") or config.num_train_timesteps

    def sampling_settings(self, **given):
        """The settings a call uses: ``given`` values that are not None, else this pipeline's saved defaults;
        ValueError, saying the range, for steps the sampler cannot take (LCMScheduler's own message does not)."""
        settings = {**LEGACY_SAMPLING_DEFAULTS, **(self.config.get("sampling_defaults") or {})}
        settings.update({k: v for k, v in given.items() if v is not None})
        steps, most = settings["num_inference_steps"], self.max_inference_steps
        if not 1 <= steps <= most:
            grid = " (the sampler's distillation grid)" if most < self.scheduler.config.num_train_timesteps else ""
            raise ValueError(f"num_inference_steps must be 1-{most}{grid}, got {steps}")
        interval = settings["guidance_interval"]
        if interval is not None:
            if len(interval) != 2 or not float(interval[0]) <= float(interval[1]):
                raise ValueError(f"guidance_interval must be (lo, hi) timesteps with lo <= hi, got {interval!r}")
            last = self.scheduler.config.num_train_timesteps - 1  # no step's timestep is above it: "inf" -> last
            low, high = float(interval[0]), float(interval[1])
            settings["guidance_interval"] = (low, max(low, min(high, float(last))))
        return settings

    def _guided_prediction(self, latents, t, tokens, null_tokens, guidance_scale):
        return guided_prediction(self.unet, self.scheduler.scale_model_input(latents, t), t, tokens, null_tokens,
                                 guidance_scale)

    @torch.no_grad()
    def __call__(self, condition_ids=None, *, age=None, gender=None, race=None, conditions=None, framing=None,
                 num_images_per_condition=1, generator=None, num_inference_steps=None, guidance_scale=None,
                 guidance_interval=None, output_type="pil", return_dict=True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), show_progress=True):
        """Sample faces.

        Conditions come from ``condition_ids`` (int or list), from attribute names/indices ``age``, ``gender``,
        ``race`` (any may be None = unknown), or directly as ``conditions`` [(age, gender, race), ...].
        ``framing``: "tight" or "wide" for every image (None: the model's choice; needs a model with framing).
        ``generator``: one torch.Generator, or a list with one per image (then each image depends only on its
        own generator and condition, not on the rest of the batch). ``guidance_scale`` <= 1 disables
        classifier-free guidance (as in diffusers); above 1 the conditional and unconditional predictions come from one
        batched UNet call, on the steps whose timestep t lies in ``guidance_interval`` (lo, hi), inclusive
        (0 = clean, 999 = pure noise for 1000 training timesteps; ``(0, inf)``: every step); the other steps
        compute only the conditional prediction. ``num_inference_steps``, ``guidance_scale`` and
        ``guidance_interval`` left None take the pipeline's saved defaults (``sampling_settings()``).
        ``output_type``: "pil", "np" (float in [0, 1]), "pt" (float in [-1, 1]) or "latent" (diffusers' convention:
        the sample before any decoding, here before the clamp to [-1, 1], a tensor).
        ``callback_on_step_end(pipe, i, t, callback_kwargs) -> dict`` as in diffusers: ``callback_kwargs`` holds
        the tensors named in ``callback_on_step_end_tensor_inputs`` (``"latents"``); returned ones replace them.
        The callback may read ``pipe.num_timesteps``, ``pipe.guidance_scale``, ``pipe.do_classifier_free_guidance``
        and set ``pipe._guidance_scale`` (later steps use it) or ``pipe._interrupt``.
        The progress bar follows ``set_progress_bar_config``; ``show_progress=False`` hides it for one call.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(unknown)}: valid: {self._callback_tensor_inputs}")
        if output_type not in ("pil", "np", "pt", "latent"):  # checked before sampling, not answered in numpy after
            raise ValueError(f"output_type {output_type!r}: valid: 'pil', 'np', 'pt', 'latent'")
        settings = self.sampling_settings(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                          guidance_interval=guidance_interval)
        self._guidance_scale, self._interrupt = settings["guidance_scale"], False
        low, high = settings["guidance_interval"] or (0, float("inf"))
        if conditions is None:
            conditions = resolve_conditions(condition_ids, age, gender, race)
        conditions = [c for c in conditions for _ in range(num_images_per_condition)]
        batch = len(conditions)
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images")

        # _execution_device: where the UNet runs, also under enable_model_cpu_offload() (weights wait on the CPU).
        device, dtype = self._execution_device, self.unet.dtype
        attributes = conditions_to_tensor(conditions).to(device)
        framing_index = parse_framing(framing)
        if framing_index is not None:
            if not self.condition_encoder.config.framings:
                raise ValueError("this model was trained without framing; leave framing out")
            attributes = nn.functional.pad(attributes, (0, 1), value=framing_index)
        tokens = self.condition_encoder(attributes).to(dtype)
        null_tokens = self.condition_encoder(torch.full_like(attributes, UNKNOWN)).to(dtype)

        size = self.unet.config.sample_size
        latents = randn_tensor((batch, self.unet.config.in_channels, size, size), generator=generator,
                               device=device, dtype=dtype)
        self.scheduler.set_timesteps(settings["num_inference_steps"], device=device)
        # Stochastic samplers (ddpm, ddim with eta) draw their step noise from the per-image generators too.
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        latents = latents * self.scheduler.init_noise_sigma
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.progress_bar(timesteps) if show_progress else timesteps):
            if self.interrupt:
                continue
            if self.do_classifier_free_guidance and low <= t <= high:  # read each step: a callback may change it
                prediction = self._guided_prediction(latents, t, tokens, null_tokens, self.guidance_scale)
            else:
                prediction = denoise(self.unet, self.scheduler.scale_model_input(latents, t), t, tokens)
            latents = self.scheduler.step(prediction, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                tensors = {"latents": latents}
                outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                latents = outputs.pop("latents", latents)

        images = latents.clamp(-1, 1).float()
        self.maybe_free_model_hooks()
        if output_type == "latent":
            result = latents
        elif output_type == "pt":
            result = images
        else:
            result = ((images + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        return ImagePipelineOutput(images=result) if return_dict else (result,)


def has_pickled_weights_only(path):
    """True if a local model folder holds .bin/.pt/.ckpt weights and no .safetensors (we never unpickle those)."""
    names = [f for _, _, files in os.walk(path) for f in files]
    pickled = any(f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for f in names)
    return pickled and not any(f.endswith(".safetensors") for f in names)


def load_pipeline(model, device=None, dtype=None, scheduler=None):
    """Load a FairFacePipeline from a local folder or a Hub repo id, safetensors only (no pickle, no remote code).

    Code-free: the pipeline is rebuilt from this module's classes, the configs and the safetensors; a ``.py``
    file shipped with the model (for ``trust_remote_code`` users) is never downloaded, imported or run, and
    releases without one load the same. Works offline from the Hub cache with ``HF_HUB_OFFLINE=1``. Raises
    ValueError with a one-line message for folders that hold only pickled weights (never unpickled) or are
    not a pipeline.
    """
    if os.path.isdir(model):
        return _load_release_consistently(model, device, dtype, scheduler)
    from huggingface_hub import snapshot_download

    folder = snapshot_download(model, allow_patterns=PIPELINE_FILES)
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise ValueError(f"{model} is not a fairface-diffusion pipeline (no model_index.json)")
    return _load_folder(folder, model, device, dtype, scheduler)


def _release_state(root):
    """Identity of the releases in a local folder: (its root manifest, a pending release's), None where absent."""
    state = []
    for path in (os.path.join(root, RELEASE_MANIFEST), os.path.join(root, PENDING_RELEASE, RELEASE_MANIFEST)):
        try:
            info = os.stat(path)
            state.append((info.st_dev, info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size))
        except OSError:
            state.append(None)
    return tuple(state)


def _load_release_consistently(root, device, dtype, scheduler):
    """A local folder's pipeline, never a mix of two releases: a run may release into it while it is read
    (utils/hub/release.py). The release state is taken before and after the read; if it changed, the read is
    repeated, and a read that failed because files moved under it counts as changed."""
    for _ in range(RELEASE_READ_ATTEMPTS):
        before = _release_state(root)
        pending = os.path.join(root, PENDING_RELEASE)
        # A committed release not yet moved into the root is the new one, whole (hard links: never rewritten).
        folder = pending if os.path.isfile(os.path.join(pending, "model_index.json")) else root
        try:
            if has_pickled_weights_only(folder):
                raise ValueError(f"{folder} holds only pickled weights (.bin/.pt); refusing to unpickle them. "
                                 "Convert them to safetensors first.")
            if not os.path.isfile(os.path.join(folder, "model_index.json")):
                raise ValueError(f"{folder} is not a fairface-diffusion pipeline folder (no model_index.json)")
            pipe = _load_folder(folder, root if folder == pending else folder, device, dtype, scheduler)
        except Exception:
            if _release_state(root) == before:
                raise  # nothing moved: a real error
            continue
        if _release_state(root) == before:
            return pipe
    raise ValueError(f"{root} changed {RELEASE_READ_ATTEMPTS} times while it was read (a run is releasing into "
                     "it); try again when it is done")


def _load_folder(folder, name, device, dtype, scheduler):
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    library, class_name = index.get("scheduler") or (None, None)
    scheduler_class = getattr(diffusers, class_name, None) if library == "diffusers" else None
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise ValueError(f"{name}: model_index.json names no diffusers scheduler (scheduler: {library}.{class_name})")
    # dtype at load time: a later .to(dtype) makes diffusers warn about "modules to keep in float32" on every load.
    components = dict(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, dtype=dtype),
        condition_encoder=ConditionEncoder.from_pretrained(folder, subfolder="condition_encoder",
                                                           use_safetensors=True, dtype=dtype),
        scheduler=scheduler_class.from_pretrained(folder, subfolder="scheduler"))
    # Pipeline settings saved in model_index.json (those FairFacePipeline takes), as from_pretrained passes them.
    parameters = inspect.signature(FairFacePipeline.__init__).parameters
    options = {k: v for k, v in index.items() if k in parameters and k not in components}
    pipe = FairFacePipeline(**components, **options)
    pipe.register_to_config(_name_or_path=name)
    if scheduler:
        pipe.set_scheduler(scheduler)
    return pipe.to(device=device)


def generate(pipe, conditions, seeds, batch_size=16, progress=False, **call_kwargs):
    """One image per (condition, seed) pair, in batches; image i depends only on conditions[i] and seeds[i].

    The generators live on the CPU so that a seed gives the same starting noise on any device.
    """
    if len(conditions) != len(seeds):
        raise ValueError(f"{len(conditions)} conditions but {len(seeds)} seeds")
    from tqdm.auto import tqdm

    images = []
    for start in tqdm(range(0, len(seeds), batch_size), desc="sampling", disable=not progress):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds[chunk]]
        output = pipe(conditions=conditions[chunk], generator=generators, show_progress=False, **call_kwargs)
        images.extend(output.images)  # not +=: list += ndarray (output_type 'np') broadcasts instead of appending
    return images
