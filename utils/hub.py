"""The release folder, its model card, and uploads to the Hugging Face Hub.

``save_release(pipeline, args, num_images, global_step)``
    The final pipeline at the root of ``--output_dir``, ``samples.png`` (a labelled grid: one row per condition,
    one column per seed) and the model card ``README.md`` (``model_card_template.md``), replacing the previous
    release as a whole, never a mix of both (``utils/release.py``).
``push_snapshot(args, folder)``
    Uploads ``epoch_{E}/`` to ``epoch_{E}/`` of the repo in the background (``run_as_future``): training goes on,
    and a failed upload is a warning, never the end of the run.
``push_release(args)``
    Waits for the snapshot uploads, creates the repo if needed and uploads the release in one commit.

Only the files of ``RELEASE_PATTERNS`` (an allowlist: model card, samples, pipeline configs, safetensors and the
generated pipeline code of utils/remote_code.py)
leave the machine: never ``checkpoint-*`` (optimizer state, pickled RNG states), logs, ``*.bin``/``*.pkl`` or
the training samples. The access token is huggingface_hub's own business (``hf auth login`` or ``HF_TOKEN``,
resolved by huggingface_hub): this module never reads, passes, prints or writes one, and the card holds no local
paths.

A failed or skipped push can be done later without training again (from the repository root):

    python -m utils.hub OUTPUT_DIR [--hub_model_id user/repo] [--hub_private_repo] [--hub_push_snapshots]

``--space`` also creates a Space next to the model repo that serves app.py's demo page for it (utils/space.py),
and links it from the model card.
"""

import argparse
import concurrent.futures
import logging
import os
import re
import shlex

import huggingface_hub

from . import atomic_files, release, remote_code, run_folder, space
from .cli import fail
from .grid import labelled_grid
from .labels import AGES, GENDERS, RACES, decode_condition, describe_condition, encode_condition, label_table_markdown
from .pipeline import PIPELINE_FILES, generate

logger = logging.getLogger(__name__)

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card_template.md")
FAIRFACE = "HuggingFaceM4/FairFace"
# What a pipeline folder (the release root or an epoch_{E}/ snapshot) may upload: configs, safetensors and
# exactly the generated pipeline code (for trust_remote_code users; our own loader never reads it).
PIPELINE_PATTERNS = [*PIPELINE_FILES, *remote_code.CODE_FILES]
RELEASE_PATTERNS = ["README.md", "samples.png", *PIPELINE_PATTERNS]
# A new release replaces these folders in the repo as a whole: no stale shard or index file of an older push
# survives next to the new weights (snapshots in epoch_{E}/ are left alone).
RELEASE_FOLDERS = ["unet/*", "condition_encoder/*", "scheduler/*"]
# samples.png: every race, both genders, seven age groups; includes the training samples' conditions 42, 73, 120.
SAMPLE_GRID_CONDITIONS = [encode_condition(*c) for c in
                          ((3, 0, 0), (8, 1, 1), (1, 1, 2), (5, 0, 3), (4, 1, 4), (2, 0, 5), (7, 1, 6))]
SAMPLE_GRID_SEEDS = [0, 1, 2, 3]
USERNAME_PLACEHOLDER = "your-username"  # in the card until the push knows the account (no --hub_model_id)
_CARD_REPO_ID = re.compile(r"<!-- fairface-diffusion repo_id: (\S+) -->")
_CARD_SPACE = re.compile(r"<!-- fairface-diffusion space -->.*")  # the card's Space line (empty until --space)


class PushError(atomic_files.SaveError):
    """Uploading to the Hub failed; the local release is intact. The message says how to retry (one line)."""


# ------------------------------------------------------------------------------------------------ repo ids
def repo_id_arg(text):
    """argparse type of --hub_model_id: ``user/repo`` or ``repo``, checked before training starts."""
    try:
        huggingface_hub.utils.validate_repo_id(text)
    except huggingface_hub.utils.HFValidationError as error:
        raise argparse.ArgumentTypeError(str(error).split(". Use `repo_type`")[0]) from None
    return text


def requested_repo_id(args):
    """--hub_model_id, or the output folder's name (the Hub puts it under the logged-in account)."""
    return args.hub_model_id or os.path.basename(os.path.normpath(os.path.abspath(args.output_dir)))


def card_repo_id(args):
    repo_id = requested_repo_id(args)
    return repo_id if "/" in repo_id else f"{USERNAME_PLACEHOLDER}/{repo_id}"


# ------------------------------------------------------------------------------------------------ release
def save_release(pipeline, args, num_images, global_step):
    """Pipeline (safetensors), samples.png and README.md at the root of --output_dir, replacing the previous
    release as a whole (utils/release.py)."""

    def write(folder):
        remote_code.save_pipeline(pipeline, folder)  # + the code plain diffusers loads it with
        sample_grid(pipeline).save(os.path.join(folder, "samples.png"))
        build_model_card(pipeline, args, num_images, global_step).save(os.path.join(folder, "README.md"))

    release.publish(args.output_dir, write)


def sample_grid(pipeline, conditions=SAMPLE_GRID_CONDITIONS, seeds=SAMPLE_GRID_SEEDS):
    """Rows = conditions, columns = seeds, with the pipeline's saved sampler settings (the training samples')."""
    pairs = [(condition, seed) for condition in conditions for seed in seeds]
    images = generate(pipeline, [decode_condition(c) for c, _ in pairs], [s for _, s in pairs], batch_size=8)
    return labelled_grid(images, len(conditions), len(seeds),
                         row_labels=[f"{c}: {describe_condition(c)}" for c in conditions],
                         col_labels=[f"seed {s}" for s in seeds])


def describe_data(args, num_images):
    """(short text, long text, Hub dataset id or None, synthetic?) of the training data; never a local path."""
    name = args.dataset_name
    parts = f"configs {' + '.join(args.dataset_config_names)}, splits {' + '.join(args.dataset_splits)} merged"
    if os.path.isdir(name):
        folder = os.path.basename(os.path.normpath(name))
        readme = os.path.join(name, "README.md")
        synthetic = getattr(args, "demo", False)
        if not synthetic and os.path.isfile(readme):
            with open(readme, encoding="utf-8") as f:
                synthetic = "synthetic demo" in f.read().lower()  # utils/demo_data.py's dataset card
        if synthetic:
            return ("synthetic demo data", f"synthetic demo data: {num_images:,} procedurally drawn faces in the "
                    f"FairFace layout (`utils/demo_data.py`, local folder `{folder}`, {parts}); no photographs of "
                    "people.", None, True)
        return (f"a local copy of FairFace-layout data (`{folder}`)",
                f"a local dataset folder `{folder}` in the layout and label order of FairFace ({parts}): "
                f"{num_images:,} images. It is not on the Hub.", None, False)
    link = f"[{name}](https://huggingface.co/datasets/{name})"
    text = f"{link}, {parts}: {num_images:,} images."
    if name == FAIRFACE and {"0.25", "1.25"} <= set(args.dataset_config_names):
        text += (" Configs 0.25 and 1.25 hold the same faces cropped with less and more margin, so each face is "
                 "seen twice.")
    if "validation" in args.dataset_splits:
        text += " The validation split was used for training too: evaluate on other data."
    return (f"FairFace ({link})" if name == FAIRFACE else link), text, name, False


def _run_setup(args):
    """(processes, mixed precision) of the accelerate run this is called in; one process outside a run."""
    from accelerate.state import AcceleratorState, is_initialized

    if is_initialized():
        state = AcceleratorState()
        precision = str(state.mixed_precision)
        if precision == "fp16" and state.device.type == "cpu":  # no float16 autocast on a CPU (utils/flag_checks.py)
            precision = "no"
        return state.num_processes, precision
    return 1, args.mixed_precision or "no"


def build_model_card(pipeline, args, num_images, global_step, repo_id=None):
    """The model card (huggingface_hub.ModelCard) of a release, from utils/model_card_template.md."""
    repo_id = repo_id or card_repo_id(args)
    data_short, data_long, dataset_id, synthetic = describe_data(args, num_images)
    world, precision = _run_setup(args)
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = max(1, num_images // world // args.train_batch_size // accumulation)
    unet = pipeline.unet
    if synthetic:
        license_id, license_name = "mit", "MIT"
        license_reason = ("The weights were trained only on synthetic images drawn by the MIT-licensed "
                          "fairface-diffusion code, so they carry the same MIT licence. No FairFace image was used, "
                          "only its label names.")
    else:
        license_id, license_name = "cc-by-4.0", "CC BY 4.0"
        license_reason = ("The weights are trained on FairFace, which is released under CC BY 4.0. As the "
                          "conservative choice they are released under the same licence, so that FairFace's "
                          "attribution requirement travels with them: credit Kärkkäinen & Joo (below) when you share "
                          "the model or work built on it. The fairface-diffusion code itself is MIT-licensed.")
    card_data = huggingface_hub.ModelCardData(
        license=license_id, library_name="diffusers", datasets=[dataset_id] if dataset_id else None,
        tags=["diffusers", "class-conditional", "image-generation", "faces", "fairface", "pytorch"]
        + (["synthetic-data"] if synthetic else []),
        pipeline_tag="unconditional-image-generation")
    context = dict(
        repo_id=repo_id, model_name=repo_id.split("/")[-1], local_dir=repo_id.split("/")[-1],
        data_short=data_short, data_long=data_long, synthetic=synthetic,
        snapshots=bool(args.push_to_hub and args.hub_push_snapshots),
        resolution=unet.config.sample_size, unet_params=f"{sum(p.numel() for p in unet.parameters()):,}",
        encoder_params=f"{sum(p.numel() for p in pipeline.condition_encoder.parameters()):,}",
        block_out_channels=", ".join(map(str, unet.config.block_out_channels)),
        layers_per_block=unet.config.layers_per_block, attention_levels=", ".join(map(str, args.attention_levels)),
        cross_attention_dim=unet.config.cross_attention_dim, num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule, prediction_type=args.prediction_type,
        num_inference_steps=args.num_inference_steps, guidance_scale=f"{args.guidance_scale:g}",
        guidance_interval=list(pipeline.sampling_settings()["guidance_interval"] or (0, args.num_train_timesteps - 1)),
        sample_rows=len(SAMPLE_GRID_CONDITIONS), sample_cols=len(SAMPLE_GRID_SEEDS),
        ages=", ".join(f"{i} = {n}" for i, n in enumerate(AGES)),
        genders=", ".join(f"{i} = {n}" for i, n in enumerate(GENDERS)),
        races=", ".join(f"{i} = {n}" for i, n in enumerate(RACES)), label_table=label_table_markdown(),
        global_step=f"{global_step:,}", epochs=f"{global_step / steps_per_epoch:.3g}", num_images=f"{num_images:,}",
        random_flip=args.random_flip, effective_batch=args.train_batch_size * world * accumulation,
        batch_detail=f"{args.train_batch_size} per device x {world} process(es) x {accumulation} accumulation step(s)",
        learning_rate=f"{args.learning_rate:g}", lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
        adam_weight_decay=f"{args.adam_weight_decay:g}", max_grad_norm=f"{args.max_grad_norm:g}",
        ema=(f"yes, decay up to {args.ema_decay:g} with warm-up; the released weights are the EMA weights"
             if args.use_ema else "no"),
        snr=(f"min-SNR loss weighting (gamma {args.snr_gamma:g})" if args.snr_gamma else "uniform loss weighting"),
        cond_drop_prob=f"{args.cond_drop_prob:g}", attr_drop_prob=f"{args.attr_drop_prob:g}",
        framing=bool(pipeline.condition_encoder.config.framings),
        precision={"no": "float32", "fp16": "float16 mixed precision", "bf16": "bfloat16 mixed precision"}.get(
            precision, precision) + f"; weights stored as {str(unet.dtype).replace('torch.', '')}",
        seed=args.seed, license_name=license_name, license_reason=license_reason,
    )
    return huggingface_hub.ModelCard.from_template(card_data, template_path=TEMPLATE, **context)


# ------------------------------------------------------------------------------------------------ uploads
class _Uploads:
    """This process's Hub state: repos already created (by requested id) and snapshot uploads in flight."""

    def __init__(self):
        self.repos = {}
        self.pending = []  # (folder name, Future)


_uploads = _Uploads()


def _error_text(error):
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or ['no details'])[0]}"


def _create_repo(args):
    """The repo's RepoUrl (created once per process). No token argument: huggingface_hub resolves it."""
    requested = requested_repo_id(args)
    if requested not in _uploads.repos:
        # private=None unless asked: the Hub's default applies (an organisation may make new repos private).
        _uploads.repos[requested] = huggingface_hub.create_repo(
            requested, private=True if args.hub_private_repo else None, exist_ok=True)
    return _uploads.repos[requested]


def push_snapshot(args, folder):
    """Upload ``folder`` (an ``epoch_{E}/`` snapshot) to ``epoch_{E}/`` of the repo without waiting for it.

    Returns the upload's Future, or None when it could not even start; either way a failure is only logged as
    a warning. ``push_release`` waits for every pending upload before its own.
    """
    name = os.path.basename(os.path.normpath(folder))
    try:
        url = _create_repo(args)
        future = huggingface_hub.upload_folder(
            repo_id=url.repo_id, folder_path=folder, path_in_repo=name, allow_patterns=PIPELINE_PATTERNS,
            commit_message=f"Snapshot {name}", run_as_future=True)
    except Exception as error:  # network, login, quota...: a snapshot is never worth stopping training for
        logger.warning(f"could not upload snapshot {name} to the Hub ({_error_text(error)}); training goes on")
        return None
    logger.info(f"uploading {name} to {url} in the background")
    future.add_done_callback(lambda done: _report_snapshot(name, url, done))
    _uploads.pending.append((name, future))
    return future


def _report_snapshot(name, url, future):
    error = "cancelled" if future.cancelled() else future.exception()
    if error:
        reason = error if isinstance(error, str) else _error_text(error)
        logger.warning(f"could not upload snapshot {name} to the Hub ({reason}); training goes on")
    else:
        logger.info(f"uploaded {name} to {url}/tree/main/{name}")


def wait_for_snapshots():
    """Block until the background snapshot uploads are done; returns the names of those that failed."""
    pending, _uploads.pending = _uploads.pending, []
    if pending:
        logger.info(f"waiting for {len(pending)} snapshot upload(s) to finish")
    concurrent.futures.wait([future for _, future in pending])
    return [name for name, future in pending if future.cancelled() or future.exception() is not None]


def retry_command(args, snapshots=False):
    flags = [f"--hub_model_id {requested_repo_id(args)}"] + ["--hub_private_repo"] * bool(args.hub_private_repo)
    return f"python -m utils.hub {shlex.quote(args.output_dir)} {' '.join(flags)}" + " --hub_push_snapshots" * snapshots


def push_release(args):
    """Create the repo (if needed) and upload the release of --output_dir in one commit (allowlist only).

    First waits for the snapshot uploads. Returns the repo URL. Raises PushError, whose one-line message holds
    the command to retry, when the upload fails; the local release is untouched.
    """
    failed = wait_for_snapshots()
    try:
        url = _create_repo(args)
        set_card_repo_id(args.output_dir, url.repo_id)
        huggingface_hub.upload_folder(
            repo_id=url.repo_id, folder_path=args.output_dir, allow_patterns=RELEASE_PATTERNS,
            delete_patterns=RELEASE_FOLDERS, commit_message="Release: pipeline, model card and samples")
    except Exception as error:  # whatever huggingface_hub raises (HTTP, login, offline mode, ...)
        raise PushError(f"could not upload to the Hub as {requested_repo_id(args)} ({_error_text(error)}). The "
                        f"model is saved in {args.output_dir}; retry with: {retry_command(args)}") from error
    if failed:
        logger.warning(f"snapshot upload(s) failed: {', '.join(failed)}; retry with: "
                       f"{retry_command(args, snapshots=True)}")
    print(f"pushed {args.output_dir} to {url}")
    return str(url)


DATASET_PATTERNS = ["README.md", "preview.png", "data/*.parquet"]  # a generated dataset: card, picture, shards


def push_dataset(output_dir, repo_id, private=False):
    """Upload a generate_dataset.py folder as a *dataset* repo in one commit: the card and data/*.parquet only
    (stale shards of an older push are deleted). ``repo_id`` "" = the folder's name under the account. Rerun to
    retry: files the Hub already holds are not sent again (content-addressed LFS). Raises PushError (one line)."""
    repo_id = repo_id or os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
    try:
        url = huggingface_hub.create_repo(repo_id, repo_type="dataset", private=True if private else None,
                                          exist_ok=True)
        huggingface_hub.upload_folder(repo_id=url.repo_id, repo_type="dataset", folder_path=output_dir,
                                      allow_patterns=DATASET_PATTERNS, delete_patterns=["data/*"],
                                      commit_message="Generated dataset: shards and card")
    except Exception as error:  # whatever huggingface_hub raises (HTTP, login, offline mode, ...)
        raise PushError(f"could not upload {output_dir} to the Hub as dataset {repo_id} ({_error_text(error)}); the "
                        f"dataset is intact: rerun the same command to retry") from error
    print(f"pushed {output_dir} to {url}")
    return str(url)


def set_card_repo_id(output_dir, repo_id):
    """Put the repo id the push resolved (e.g. with the account name) into the card's commands and snippet."""
    path = os.path.join(output_dir, "README.md")
    if not os.path.isfile(path):
        logger.warning(f"{output_dir} has no model card (README.md); uploading without one")
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    match = _CARD_REPO_ID.search(text)
    if match and match.group(1) != repo_id:
        with open(f"{path}.tmp", "w", encoding="utf-8") as f:
            f.write(text.replace(match.group(1), repo_id))
        os.replace(f"{path}.tmp", path)


def set_card_space(output_dir, space_url):
    """Link the Space from the model card (its "Try it in a browser" section)."""
    path = os.path.join(output_dir, "README.md")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(f"{path}.tmp", "w", encoding="utf-8") as f:
            f.write(_CARD_SPACE.sub(lambda _: f"<!-- fairface-diffusion space --> **On the Hub:** [{space_url}]"
                                    f"({space_url}) serves this page for this model.", text))
        os.replace(f"{path}.tmp", path)


def check_push_access(args):
    """Before a --push_to_hub run trains: PushError now, instead of after training, when the push cannot work
    (not logged in, or an output folder name that is no valid repo name). Reads no token, only whether one exists."""
    try:
        huggingface_hub.utils.validate_repo_id(requested_repo_id(args))
    except huggingface_hub.utils.HFValidationError:
        raise PushError(f"--push_to_hub: {requested_repo_id(args)!r} (the output folder's name) is no valid Hub "
                        "repo name; give one with --hub_model_id user/repo") from None
    if huggingface_hub.get_token() is None:
        raise PushError("--push_to_hub: not logged in to the Hugging Face Hub; run `hf auth login` "
                        "(`huggingface-cli login` with huggingface_hub < 1.0) or set HF_TOKEN first")


# ------------------------------------------------------------------------------------------------ command line
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m utils.hub",
        description="Upload a finished train_fairface.py run to the Hugging Face Hub: the release at the root of "
                    "OUTPUT_DIR with its model card and samples (and its epoch_N/ snapshots with "
                    "--hub_push_snapshots). Log in first with `hf auth login` or set HF_TOKEN.")
    parser.add_argument("output_dir", help="train_fairface.py's --output_dir")
    parser.add_argument("--hub_model_id", type=repo_id_arg, default=None,
                        help="user/repo (default: the folder's name under your account)")
    parser.add_argument("--hub_private_repo", action="store_true")
    parser.add_argument("--hub_push_snapshots", action="store_true", help="Also upload the epoch_N/ snapshots.")
    parser.add_argument("--space", action="store_true",
                        help="Also create a gradio Space next to the model repo that serves app.py for it.")
    parser.add_argument("--hub_space_id", type=repo_id_arg, default=None,
                        help="The Space's user/name (default: the model's repo id + -demo).")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.output_dir, "model_index.json")):
        fail(f"{args.output_dir} holds no released pipeline (no model_index.json); train with train_fairface.py "
             "first", prog=parser.prog)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    try:  # never upload a folder that a run is writing, nor a release that a kill interrupted
        if os.access(args.output_dir, os.W_OK):  # (no run writes into a read-only folder)
            run_folder.lock(args.output_dir)
            release.finish(args.output_dir)
    except (run_folder.FolderInUse, OSError) as error:
        fail(str(error), prog=parser.prog)
    if args.hub_push_snapshots:
        snapshots = [name for name in os.listdir(args.output_dir) if re.fullmatch(r"epoch_\d+", name)
                     and os.path.isfile(os.path.join(args.output_dir, name, "model_index.json"))]
        for name in sorted(snapshots, key=lambda n: int(n.split("_")[1])):
            push_snapshot(args, os.path.join(args.output_dir, name))
    try:
        if args.space:  # the Space first: the card that push_release uploads links to it
            model_id, space_id = _space_step(args, lambda: create_space(args))
        push_release(args)
        if args.space:
            print(f"pushed the demo app to {_space_step(args, lambda: space.upload_space(space_id, model_id))}")
    except PushError as error:
        fail(str(error), prog=parser.prog)


def create_space(args):
    """(model repo id, Space repo id), both resolved by the Hub; the card links the Space."""
    model_id = _create_repo(args).repo_id
    space_id = space.create_space(args, model_id).repo_id
    set_card_space(args.output_dir, f"https://huggingface.co/spaces/{space_id}")
    return model_id, space_id


def _space_step(args, step):
    try:
        return step()
    except Exception as error:  # whatever huggingface_hub raises; the local release is untouched
        raise PushError(f"could not create the Space ({_error_text(error)}); retry with: "
                        f"{retry_command(args)} --space") from error


if __name__ == "__main__":
    main()
