"""The start of a training run, shared by train_fairface.py and distill_fairface.py.

``check_output_dir(args)``: the output folder is writable, the Hub is reachable when pushing, and the
checkpoint to resume from exists, all before anything slow. ``make_accelerator(args)``: the Accelerator,
logging, and the run lock on --output_dir (utils/run/run_folder.py). ``load_training_data(args, accelerator)``:
the dataset (the demo's generated one when --demo) and its pixel cache, built once per disk by all the processes
of the machine that builds it.
"""

import contextlib
import logging
import os

from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from ..files import atomic_files
from . import checkpoints, distributed, flag_checks, run_folder
from ..data import fairface, pixel_cache
from ..hub import uploads
from ..cli import fail, positive_int


def add_ddp_timeout_arg(parser):
    """--ddp_timeout, the same for every script that trains on several processes."""
    add = parser.add_argument
    add("--ddp_timeout", type=positive_int, default=7200, help="Seconds the processes wait for each other (barriers, "
        "collectives; transformers' flag). 7200: other machines wait while the first builds the pixel cache (about "
        "195k FairFace images, shared by its processes), all ranks while rank 0 writes and pushes the release; NCCL's "
        "default of 600 s ended such runs.")


def check_output_dir(args):
    """Fail (exit 2) at once on an unwritable --output_dir, a Hub push that cannot work or a wrong checkpoint
    path; returns the checkpoint to resume from (None: a new run)."""
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        probe = os.path.join(args.output_dir, f".write-test-{os.uname().nodename}-{os.getpid()}")  # per process
        open(probe, "w").close()
        os.remove(probe)
    except OSError as error:
        fail(f"output folder {args.output_dir!r} is not writable: {error.strerror or error}")
    if args.push_to_hub:  # not logged in / no valid repo name: fail now, not after days of training
        try:
            uploads.check_push_access(args)
        except uploads.PushError as error:
            fail(str(error))
    checkpoint = None
    if args.resume_from_checkpoint:  # checked before the data: a wrong path fails at once
        try:
            checkpoint = checkpoints.resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
        except ValueError as error:
            fail(str(error))
    return checkpoint


def make_accelerator(args, logger):
    """The run's Accelerator (with --output_dir locked for this run) and the logging set up."""
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        kwargs_handlers=[distributed.process_group_kwargs(args.ddp_timeout)],
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)  # one line per file saved is noise
    run_folder.claim(accelerator, args.output_dir)  # one run per folder (else exit 2); tidies up after killed runs
    flag_checks.warn_about_precision(accelerator, logger)
    return accelerator


def load_training_data(args, accelerator):
    """(dataset, FairFaceImages) of --dataset_name etc.; --demo generates the demo data if it is missing."""
    def build_or_load_data():  # one writer per disk: the global main first (utils/run/distributed.py)
        try:
            if args.demo and not os.path.isdir(args.dataset_name):
                from ..data.demo_data import LONG_TAILED_DEMO_IMAGES, make_demo_dataset
                distribution = getattr(args, "demo_distribution", "uniform")
                make_demo_dataset(args.dataset_name, resolution=64, seed=args.seed, distribution=distribution,
                                  num_images=2016 if distribution == "uniform" else LONG_TAILED_DEMO_IMAGES)
            return fairface.load_fairface(args.dataset_name, args.dataset_config_names, args.dataset_splits,
                                          args.cache_dir)
        except ValueError as error:
            fail(str(error))
    dataset = distributed.in_writer_order(accelerator, build_or_load_data)
    cache = None
    if args.preprocess_cache:
        try:
            cache = build_pixel_cache(args, accelerator, dataset)
        except OSError as error:  # not a folder, disk full, ...
            fail(f"cannot build the pixel cache in {args.preprocess_cache!r}: {error.strerror or error}")
    return dataset, fairface.FairFaceImages(dataset, args.resolution, cache)


def build_pixel_cache(args, accelerator, dataset):
    """The pixel cache of --preprocess_cache, built by every process of a machine: each decodes a contiguous block
    of the images into part files of its own, the machine's local main assembles them and commits the cache
    (utils/data/pixel_cache.py; byte for byte a one-process build). Machines in writer order
    (utils/run/distributed.py): the global main's first; then every other machine whose disk does not show that
    cache (a node-local --preprocess_cache) builds its own copy, and one that shares the disk loads the first.
    Every rank calls it."""
    folder = pixel_cache.pixel_cache_folder(dataset, args.preprocess_cache, args.resolution)
    main_node = accelerator.process_index == accelerator.local_process_index  # the global main's machine
    for builders in (main_node, not main_node):  # which machines build in this round
        with contextlib.ExitStack() as build:
            tmp = None
            if builders and accelerator.is_local_main_process and not pixel_cache.pixel_cache_complete(folder):
                tmp = build.enter_context(pixel_cache.pixel_cache_build(folder))  # held (locked) until committed
            tmp, part, parts = distributed.node_main_value(accelerator, tmp)
            if tmp is not None:
                pixel_cache.encode_part(dataset, tmp, args.resolution, part, parts, args.dataloader_num_workers,
                                        progress=accelerator.is_local_main_process)
            accelerator.wait_for_everyone()  # every part written
            if tmp is not None and accelerator.is_local_main_process:
                pixel_cache.assemble_parts(tmp, parts, args.resolution)
        accelerator.wait_for_everyone()  # committed
    return pixel_cache.load_pixel_cache(folder)


def run_main(main, parse_args):
    """``main(parse_args())``; a SaveError (disk full, ...) ends it with one line and exit 2: the checkpoints,
    snapshots and release written before are intact. So does a process group broken by another rank's failure or
    by --ddp_timeout: the failing rank's own line says what went wrong, the others say they waited. The process
    group is left on every way out (one-line failures included), so a multi-process run ends with its own exit
    status, not an abort at shutdown."""
    from tqdm.auto import tqdm

    args = parse_args()
    try:
        main(args)
    except (atomic_files.SaveError, RuntimeError) as error:
        line = str(error) if isinstance(error, atomic_files.SaveError) else \
            distributed.broken_group_line(error, args.ddp_timeout)  # another rank failed: its error is the news
        if line is None:
            raise
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()  # the error is the last line
        fail(line)
    finally:
        distributed.leave_process_group()
