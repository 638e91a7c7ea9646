"""Where a distilled student came from and what it cost: the teacher's identity and the student's model card.

``teacher_identity(teacher)``: the teacher's folder or Hub id, its Hub revision when it came from the Hub, and a
SHA-256 over its weight files (UNet and condition encoder safetensors), so a student names exactly which weights it
learned from. ``teacher_card(teacher, revision)``: the teacher's model card, the one reading of it for a folder and
a Hub id alike. ``build_card``: the student's README.md: what it is, how and at what cost it was distilled, how to
sample it (one UNet evaluation per image per step, no guidance), the teacher's licence and attribution (a student is
trained from the teacher's weights and predictions, so it carries both), and the teacher's own card below.
"""

import hashlib
import logging
import os
import re

import huggingface_hub
import yaml
from huggingface_hub.errors import EntryNotFoundError

from ..files.atomic_files import update_digest
from ..model.pipeline import PENDING_RELEASE, PIPELINE_FILES

logger = logging.getLogger(__name__)

CARD = "README.md"
HUB = "https://huggingface.co"
# What a card of ours says about its data and licence (utils/hub/model_card_template.md): the "**Data:**" paragraph
# and the "## License and citation" section (FairFace's attribution and citation); a student's card (below) too.
_DATA = re.compile(r"^\*\*Data:\*\* (.*?)(?=\n[ \t]*\n|\Z)", re.M | re.S)
_LICENSE_SECTION = re.compile(r"^## Licen[cs]e[^\n]*\n(.*?)(?=^## |\Z)", re.M | re.S)

WEIGHT_FILES = [("unet", "diffusion_pytorch_model.safetensors"),
                ("condition_encoder", "diffusion_pytorch_model.safetensors")]


def teacher_folder(teacher):
    """(local folder, Hub revision or None) of a teacher given as a folder or Hub id (offline: the Hub cache)."""
    if os.path.isdir(teacher):
        pending = os.path.join(teacher, PENDING_RELEASE)
        return (pending if os.path.isfile(os.path.join(pending, "model_index.json")) else teacher), None
    # The card comes with the weights (same commit, same cache): build_card reads it from there at the end.
    folder = huggingface_hub.snapshot_download(teacher, allow_patterns=PIPELINE_FILES + [CARD])
    return folder, os.path.basename(os.path.normpath(folder))  # snapshots/<commit>


def teacher_identity(teacher):
    """{"teacher": name, "revision": commit or None, "weights_sha256": hex} (no local path beyond the name)."""
    folder, revision = teacher_folder(teacher)
    digest = hashlib.sha256()
    for parts in WEIGHT_FILES:
        update_digest(digest, os.path.join(folder, *parts))
    name = teacher if revision else os.path.basename(os.path.normpath(os.path.abspath(teacher)))
    return {"teacher": name, "revision": revision, "weights_sha256": digest.hexdigest()}


def teacher_card(teacher, revision=None):
    """The teacher's model card (huggingface_hub.ModelCard), or None where it has none or it cannot be read.

    A folder: its README.md (a pending release's first, as teacher_folder reads the weights). A Hub id: README.md
    of the repo at ``revision``, the commit its weights came from (teacher_identity), from the Hub cache the
    pipeline was loaded from (offline: only the cache). A card is read as text and YAML (yaml.safe_load), nothing of
    a model folder is run. A missing card never fails a run that is done: a warning, and the student's card says
    so (build_card)."""
    try:
        if os.path.isdir(teacher):
            path = os.path.join(teacher_folder(teacher)[0], CARD)
            if not os.path.isfile(path):
                logger.warning(f"the teacher {teacher} has no model card ({CARD}); the student's card says so")
                return None
        else:
            path = huggingface_hub.hf_hub_download(teacher, CARD, revision=revision)
        return huggingface_hub.ModelCard.load(path)
    # EntryNotFoundError: no README.md in the repo; OSError: not in the cache offline, the Hub unreachable, a file
    # that moved; ValueError/YAMLError: metadata that is not a card's.
    except (EntryNotFoundError, OSError, ValueError, yaml.YAMLError) as error:
        logger.warning(f"the teacher {teacher}'s model card ({CARD}) could not be read ({type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}); the student's card says so")
        return None


def teacher_link(identity):
    """The teacher for a card: a link to its commit on the Hub, or a local folder's name (no path)."""
    name, revision = identity["teacher"], identity["revision"]
    return f"[{name}]({HUB}/{name}/tree/{revision})" if revision else f"`{name}`"


def license_section(card, identity):
    """The student's "License and attribution": the teacher's licence, training data and attribution as its card
    states them (quoted), or plainly that the teacher's card was not found."""
    link = teacher_link(identity)
    if card is None:
        where = "on the Hub or in the Hub cache" if identity["revision"] else "in the teacher's folder"
        return f"""## License and attribution

**The teacher's model card (README.md) was not found** {where}: the teacher {link} may be an older release or a
snapshot (`epoch_N/`) saved without one. Its licence and the attribution its training data asks for are unknown
here, so this card names no licence. This student is trained from the teacher's weights and predictions and carries
both: find them for the teacher before you share the student or its images (a model trained on FairFace, for
example, carries FairFace's CC BY 4.0 attribution to Kärkkäinen & Joo, WACV 2021).
"""
    license_id = card.data.license
    licence = f"`{license_id}`" if license_id else "which the teacher's card does not name in its metadata"
    text = f"""## License and attribution

This student is trained from the weights and predictions of the teacher {link}, so it carries the teacher's
licence, {licence}, and the attribution that comes with it."""
    data, section = _DATA.search(card.text), _LICENSE_SECTION.search(card.text)
    if data:
        text += f"\n\nThe teacher's training data: {data.group(1).strip()}"
    if section:
        quoted = "\n".join(f"> {line}" if line.strip() else ">" for line in section.group(1).strip().splitlines())
        text += f"\n\nThe teacher's card on its licence and citation:\n\n{quoted}"
    elif not license_id:
        text += " Check the teacher's card (below) before you share the student or its images."
    return text + "\n"


def build_card(args, identity, global_step, train_seconds, num_images, repo_id):
    """The student's model card (huggingface_hub.ModelCard): its own sections with the teacher's licence and
    attribution, then the teacher's card if any (teacher_card, at the revision in ``identity``)."""
    card = teacher_card(args.teacher, identity["revision"])
    data = card.data if card else huggingface_hub.ModelCardData(library_name="diffusers")
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
    revision = f" (revision `{identity['revision']}`)" if identity["revision"] else ""
    text = f"""---
{data.to_yaml()}
---
<!-- fairface-diffusion repo_id: {repo_id} -->

# {repo_id.split('/')[-1]} (distilled)

A **few-step student distilled** from the teacher {teacher_link(identity)}{revision} (weights SHA-256
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

{license_section(card, identity)}"""
    if card:
        text += "\n## The teacher's model card\n\n" + card.text.replace("<!-- fairface-diffusion repo_id:",
                                                                        "<!-- teacher repo_id:")
    return huggingface_hub.ModelCard(text)

