"""Uploads to the Hugging Face Hub; the ``python -m utils.hub`` command line is utils/hub/__main__.py. The release
these upload (pipeline, samples.png, model card) is written by utils/hub/model_card.py's ``save_release``.

``push_snapshot(args, folder)``
    Uploads ``epoch_{E}/`` to ``epoch_{E}/`` of the repo in the background (``run_as_future``): training goes on,
    and a failed upload is a warning, never the end of the run.
``push_release(args)``
    Waits for the snapshot uploads, creates the repo if needed and uploads the release in one commit.

Only the files of ``RELEASE_PATTERNS`` (an allowlist: model card, samples, pipeline configs, safetensors and the
generated pipeline code of utils/hub/remote_code.py)
leave the machine: never ``checkpoint-*`` (optimizer state, pickled RNG states), logs, ``*.bin``/``*.pkl`` or
the training samples. The access token is huggingface_hub's own business (``hf auth login`` or ``HF_TOKEN``,
resolved by huggingface_hub): this module never reads, passes, prints or writes one, and the card holds no local
paths.

A failed or skipped push can be done later without training again (from the repository root):

    python -m utils.hub OUTPUT_DIR [--hub_model_id user/repo] [--hub_private_repo] [--hub_push_snapshots]

``--space`` also creates a Space next to the model repo that serves app.py's demo page for it (utils/hub/space.py),
and links it from the model card.
"""

import argparse
import concurrent.futures
import logging
import os
import shlex

import huggingface_hub

from ..files import atomic_files
from . import remote_code
from .model_card import requested_repo_id, set_card_repo_id
from ..model.pipeline import PIPELINE_FILES

logger = logging.getLogger(__name__)

PROG = "python -m utils.hub"
# What a pipeline folder (the release root or an epoch_{E}/ snapshot) may upload: configs, safetensors and
# exactly the generated pipeline code (for trust_remote_code users; our own loader never reads it).
PIPELINE_PATTERNS = [*PIPELINE_FILES, *remote_code.CODE_FILES]
RELEASE_PATTERNS = ["README.md", "samples.png", *PIPELINE_PATTERNS]
# A new release replaces these folders in the repo as a whole: no stale shard or index file of an older push
# survives next to the new weights (snapshots in epoch_{E}/ are left alone).
RELEASE_FOLDERS = ["unet/*", "condition_encoder/*", "scheduler/*"]


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


# ------------------------------------------------------------------------------------------------ uploads
class _Uploads:
    """This process's Hub state: repos already created (by requested id) and snapshot uploads in flight."""

    def __init__(self):
        self.repos = {}
        self.pending = []  # (folder name, Future)


_uploads = _Uploads()


def error_text(error):
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or ['no details'])[0]}"


def create_model_repo(args):
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
        url = create_model_repo(args)
        future = huggingface_hub.upload_folder(
            repo_id=url.repo_id, folder_path=folder, path_in_repo=name, allow_patterns=PIPELINE_PATTERNS,
            commit_message=f"Snapshot {name}", run_as_future=True)
    except Exception as error:  # network, login, quota...: a snapshot is never worth stopping training for
        logger.warning(f"could not upload snapshot {name} to the Hub ({error_text(error)}); training goes on")
        return None
    logger.info(f"uploading {name} to {url} in the background")
    future.add_done_callback(lambda done: _report_snapshot(name, url, done))
    _uploads.pending.append((name, future))
    return future


def _report_snapshot(name, url, future):
    error = "cancelled" if future.cancelled() else future.exception()
    if error:
        reason = error if isinstance(error, str) else error_text(error)
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
        url = create_model_repo(args)
        set_card_repo_id(args.output_dir, url.repo_id)
        huggingface_hub.upload_folder(
            repo_id=url.repo_id, folder_path=args.output_dir, allow_patterns=RELEASE_PATTERNS,
            delete_patterns=RELEASE_FOLDERS, commit_message="Release: pipeline, model card and samples")
    except Exception as error:  # whatever huggingface_hub raises (HTTP, login, offline mode, ...)
        raise PushError(f"could not upload to the Hub as {requested_repo_id(args)} ({error_text(error)}). The "
                        f"model is saved in {args.output_dir}; retry with: {retry_command(args)}") from error
    if failed:
        logger.warning(f"snapshot upload(s) failed: {', '.join(failed)}; retry with: "
                       f"{retry_command(args, snapshots=True)}")
    print(f"pushed {args.output_dir} to {url}")
    return str(url)


# A generated dataset's shards, as utils/datasets/dataset_plan.py names them (data/train-XXXXX-of-YYYYY.parquet):
# what a push uploads, and in the repo the files it may replace. Nothing else under data/ is ours to delete.
DATASET_SHARDS = "data/train-" + "[0-9]" * 5 + "-of-" + "[0-9]" * 5 + ".parquet"
DATASET_PATTERNS = ["README.md", "preview.png", DATASET_SHARDS]  # a generated dataset: card, picture, shards


def push_dataset(output_dir, repo_id, private=False):
    """Upload a generate_dataset.py folder as a *dataset* repo in one commit: the card, preview and its shards
    only. Shards of an older push (``DATASET_SHARDS`` names the upload does not replace) are deleted in the same
    commit, so ``data/train-*`` holds this dataset alone; any other file of the repo is kept. ``repo_id`` "" = the
    folder's name under the account. Rerun to retry: files the Hub already holds are not sent again
    (content-addressed LFS). Raises PushError (one line)."""
    repo_id = repo_id or os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
    try:
        url = huggingface_hub.create_repo(repo_id, repo_type="dataset", private=True if private else None,
                                          exist_ok=True)
        # upload_folder deletes the repo's files matching delete_patterns except those this commit uploads
        huggingface_hub.upload_folder(repo_id=url.repo_id, repo_type="dataset", folder_path=output_dir,
                                      allow_patterns=DATASET_PATTERNS, delete_patterns=[DATASET_SHARDS],
                                      commit_message="Generated dataset: shards and card")
    except Exception as error:  # whatever huggingface_hub raises (HTTP, login, offline mode, ...)
        raise PushError(f"could not upload {output_dir} to the Hub as dataset {repo_id} ({error_text(error)}); the "
                        f"dataset is intact: rerun the same command to retry") from error
    print(f"pushed {output_dir} to {url}")
    return str(url)


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
