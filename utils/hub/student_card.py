"""Where a distilled student came from and what it cost: the teacher's identity and the student's model card.

``teacher_identity(teacher)``: the teacher's folder or Hub id, its Hub revision when it came from the Hub, and a
SHA-256 over its weight files (UNet and condition encoder safetensors), so a student names exactly which weights it
learned from. ``build_card``: the student's README.md: what it is, how and at what cost it was distilled, how to
sample it (one UNet evaluation per image per step, no guidance), and the teacher's own card below.
"""

import hashlib
import os

import huggingface_hub

from ..model.pipeline import PENDING_RELEASE, PIPELINE_FILES

WEIGHT_FILES = [("unet", "diffusion_pytorch_model.safetensors"),
                ("condition_encoder", "diffusion_pytorch_model.safetensors")]


def teacher_folder(teacher):
    """(local folder, Hub revision or None) of a teacher given as a folder or Hub id (offline: the Hub cache)."""
    if os.path.isdir(teacher):
        pending = os.path.join(teacher, PENDING_RELEASE)
        return (pending if os.path.isfile(os.path.join(pending, "model_index.json")) else teacher), None
    folder = huggingface_hub.snapshot_download(teacher, allow_patterns=PIPELINE_FILES)
    return folder, os.path.basename(os.path.normpath(folder))  # snapshots/<commit>


def teacher_identity(teacher):
    """{"teacher": name, "revision": commit or None, "weights_sha256": hex} (no local path beyond the name)."""
    folder, revision = teacher_folder(teacher)
    digest = hashlib.sha256()
    for parts in WEIGHT_FILES:
        with open(os.path.join(folder, *parts), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    name = teacher if revision else os.path.basename(os.path.normpath(os.path.abspath(teacher)))
    return {"teacher": name, "revision": revision, "weights_sha256": digest.hexdigest()}


def build_card(args, identity, global_step, train_seconds, num_images, repo_id):
    """The student's model card (huggingface_hub.ModelCard): its own section, then the teacher's card if any."""
    folder, _ = teacher_folder(args.teacher)
    teacher_card = None
    if os.path.isfile(os.path.join(folder, "README.md")):
        teacher_card = huggingface_hub.ModelCard.load(os.path.join(folder, "README.md"))
    data = teacher_card.data if teacher_card else huggingface_hub.ModelCardData(library_name="diffusers")
    method_tag = "consistency-model" if args.method == "consistency" else "guidance-distillation"
    data.tags = sorted(set(data.tags or []) | {"distillation", method_tag, "few-step"})
    if identity["revision"]:
        data.base_model = identity["teacher"]
    steps = args.num_inference_steps
    if args.method == "consistency":
        summary, sampler, target = "guided consistency distillation (the LCM recipe)", "an `LCMScheduler`", \
            ", the target once"
        method = f"""consistency distillation (Song et al. 2023; Luo et al. 2023, LCM): a DDIM step of the guided teacher
  on a {args.num_ddim_timesteps}-point grid of its {args.num_train_timesteps} training timesteps, a target network
  that is an EMA (decay {args.ema_decay:g}) of the student, boundary conditions c_skip/c_out, pseudo-Huber loss; student
  and target start from the teacher's weights; the condition encoder is the teacher's, frozen."""
        if args.num_segments > 1:
            summary = f"guided multistep consistency distillation (Heek et al. 2024, {args.num_segments} segments)"
            sampler = "a `DDIMScheduler` (eta 0, trailing) through the segments' starts"
            method += f"""
  Multistep (Heek et al. 2024): the grid is cut into {args.num_segments} equal segments; the student maps each point
  to its segment's start (DDIM with its clean estimate) instead of to the clean image, and samples one evaluation
  per segment."""
    else:
        summary, sampler, target = "guidance distillation (Meng et al. 2023, stage 1)", "the teacher's own sampler", ""
        method = f"""guidance distillation (Meng et al. 2023, stage 1): at timesteps drawn from all
  {args.num_train_timesteps} of the teacher's, the student's one prediction is pulled (mean squared error) to the
  teacher's guided prediction, uncond + {args.guidance_scale:g} * (cond - uncond); the student starts from the
  teacher's weights and is released as an EMA (decay {args.ema_decay:g}); the condition encoder is the teacher's,
  frozen."""
    revision = f", revision `{identity['revision']}`" if identity["revision"] else ""
    text = f"""---
{data.to_yaml()}
---
<!-- fairface-diffusion repo_id: {repo_id} -->

# {repo_id.split('/')[-1]} (distilled)

A **few-step student distilled** from the teacher `{identity['teacher']}`{revision} (weights SHA-256
`{identity['weights_sha256']}`) with `distill_fairface.py` of the fairface-diffusion repository: {summary} with the
teacher's classifier-free guidance {args.guidance_scale:g} baked in. It samples with **one UNet evaluation per image
per step** and no guidance: {steps} step(s) by default, {sampler} on the teacher's noise schedule and prediction type.

![samples](samples.png)

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)  # or a local folder
face = pipe(age="20-29", gender="female", race="black").images[0]  # {steps} step(s), {steps} UNet call(s)
```

Do not pass a `guidance_scale` above 1: the guidance is already in the weights (it would be applied twice).

## Distillation

- Method: {method}
- Data: {args.dataset_name if not os.path.isdir(args.dataset_name) else 'the teacher-style local data folder `'
  + os.path.basename(os.path.normpath(args.dataset_name)) + '`'} ({num_images:,} images), batch
  {args.train_batch_size} per device, learning rate {args.learning_rate:g}, attribute dropout
  {args.attr_drop_prob:g}, condition dropout {args.cond_drop_prob:g}.
- Cost: {global_step:,} steps ({global_step * args.train_batch_size:,} images per device), {train_seconds:,.0f} s of
  training wall time; each step runs the teacher twice (conditional and unconditional, one batched call){target}
  and the student forward and backward once.
- Released weights: {"the target network (the student's EMA)" if args.release_weights == "target" else "the student"}.
"""
    if teacher_card:
        text += "\n## The teacher's model card\n\n" + teacher_card.text.replace("<!-- fairface-diffusion repo_id:",
                                                                               "<!-- teacher repo_id:")
    return huggingface_hub.ModelCard(text)

