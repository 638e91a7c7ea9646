"""``python -m utils.hub``: upload a finished run to the Hub later, without training again (from the repository root).

    python -m utils.hub OUTPUT_DIR [--hub_model_id user/repo] [--hub_private_repo] [--hub_push_snapshots] [--space]

A command, like the scripts at the top of the repository: it finishes a release that a kill interrupted under
the run folder's lock (utils/run/run_folder.py), then uploads it with utils/hub/uploads.py; ``--space`` also
creates the demo Space next to the model (utils/hub/space.py).
"""

import argparse
import logging
import os
import re

from ..cli import fail
from ..run import run_folder
from . import release, space
from .model_card import set_card_space
from .uploads import (PROG, PushError, create_model_repo, error_text, push_release, push_snapshot, repo_id_arg,
                      retry_command)


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(
        prog=PROG,
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
    return parser.parse_args(input_args)


def main(args):
    # A release whose finish a kill interrupted is complete in .release-new (the first one: nothing at the root yet).
    pending = os.path.isfile(os.path.join(args.output_dir, release.PENDING, "model_index.json"))
    if not (pending or os.path.isfile(os.path.join(args.output_dir, "model_index.json"))):
        fail(f"{args.output_dir} holds no released pipeline (no model_index.json); train with train_fairface.py "
             "first", prog=PROG)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    try:  # never upload a folder that a run is writing, nor a release that a kill interrupted
        if os.access(args.output_dir, os.W_OK):  # (no run writes into a read-only folder)
            run_folder.lock(args.output_dir)
            release.finish(args.output_dir)
        elif pending:
            fail(f"{args.output_dir} holds an unfinished release ({release.PENDING}/) and is read-only; run this "
                 "where it is writable, so the release is finished before it is uploaded", prog=PROG)
    except (run_folder.FolderInUse, OSError) as error:
        fail(str(error), prog=PROG)
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
        fail(str(error), prog=PROG)


def create_space(args):
    """(model repo id, Space repo id), both resolved by the Hub; the card links the Space."""
    model_id = create_model_repo(args).repo_id
    space_id = space.create_space(args, model_id).repo_id
    set_card_space(args.output_dir, f"https://huggingface.co/spaces/{space_id}")
    return model_id, space_id


def _space_step(args, step):
    try:
        return step()
    except Exception as error:  # whatever huggingface_hub raises; the local release is untouched
        raise PushError(f"could not create the Space ({error_text(error)}); retry with: "
                        f"{retry_command(args)} --space") from error


if __name__ == "__main__":
    main(parse_args())
