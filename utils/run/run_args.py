"""The flags of a training-like run (train_fairface.py, distill_fairface.py), declared once.

Names are the diffusers examples' (``train_unconditional.py``, ``train_text_to_image.py``), so what users type
there works here: ``--resume_from_checkpoint checkpoint-2000``, ``--gradient_checkpointing``,
``--tracker_project_name``, ``--report_to``, ``--validation_conditions`` (our ``--validation_prompts``). Each
script passes the defaults that differ (a distillation learns at 1e-5, a training run at 2e-4); the help says
why where a default is not obvious. What the flags do is kept in one place too: utils/run/lifecycle.py.
"""

from ..cli import beta, condition_id, nonnegative_float, nonnegative_int, positive_float, positive_int, probability
from ..data import group_balance
from ..hub import uploads
from .flag_checks import TRACKER_PACKAGES
from .run_setup import add_ddp_timeout_arg

LR_SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
# Drawn for the samples a run writes (sample_epoch_{E}_{i}.png, sample_step_{N}_{i}.png) and logs to its trackers,
# seed i for the i-th: 42 = 20-29 Male East Asian, 73 = 40-49 Male White, 120 = 70+ Female Indian (young,
# middle-aged and old, both genders): the same faces at every epoch, so epochs compare.
VALIDATION_CONDITIONS = [42, 73, 120]


def add_data_args(parser):
    """The training data (FairFace or a local folder in its layout) and how it is read; returns the group."""
    group = parser.add_argument_group("data")
    add = group.add_argument
    add("--dataset_name", default="HuggingFaceM4/FairFace", help="Hub dataset id or local folder in the same layout.")
    add("--dataset_config_names", nargs="+", default=["0.25", "1.25"], help="FairFace configs (face padding) to merge.")
    add("--dataset_splits", nargs="+", default=["train", "validation"], help="Splits to merge (all go to training).")
    add("--cache_dir", default=None, help="datasets cache directory.")
    add("--preprocess_cache", default=None, help="Folder for a uint8 pixel cache: decode/resize every image once "
        "(>=10x faster epochs, benchmarks/data_loading.py); keyed by dataset, configs, splits and resolution.")
    add("--dataloader_num_workers", type=nonnegative_int, default=0, help="Data-loading worker processes.")
    add("--random_flip", action="store_true", help="Randomly mirror faces horizontally.")
    add("--cond_drop_prob", type=probability, default=0.1, help="Drop the whole condition: the unconditioned "
        "output classifier-free guidance needs (train: learn it; distill: distil it).")
    add("--attr_drop_prob", type=probability, default=0.1, help="Drop each attribute on its own (partial conditions).")
    add("--framing_drop_prob", type=probability, default=0.1, help="Drop the framing on its own (model's choice).")
    add("--balance_by", choices=group_balance.BALANCE_GROUPS, default="none", help="Give rare groups their due: "
        "weigh each image by how common its age, gender, race or condition is (FairFace has 30x fewer faces over 70 "
        "than in their twenties; docs/long_tail.md). Default: none.")
    add("--balance_power", type=positive_float, default=0.5, help="Weight = group count ** -POWER: 1 = every group "
        "equally often (inverse frequency), 0.5 = square root (default: %(default)s).")
    add("--balance_with", choices=group_balance.BALANCE_METHODS, default="sampling", help="sampling: draw each "
        "epoch's images with those weights (with replacement; same length, exact resume); loss: keep the data order "
        "and weigh each image's loss (default: %(default)s).")
    return group


def add_optimization_args(parser, learning_rate, lr_scheduler, lr_warmup_steps, adam_weight_decay, train_batch_size=64):
    """Batch, optimizer, precision, memory, seed and non-finite steps; the defaults that differ are the script's.
    Returns the group."""
    group = parser.add_argument_group("optimisation")
    add = group.add_argument
    add("--train_batch_size", type=positive_int, default=train_batch_size, help="Per-device batch size.")
    add("--gradient_accumulation_steps", type=positive_int, default=1)
    add("--learning_rate", type=positive_float, default=learning_rate, help="Peak learning rate (default: "
        "%(default)s). A resume applies a new value (logged) from its step on.")
    add("--lr_scheduler", default=lr_scheduler, choices=LR_SCHEDULERS, help="diffusers get_scheduler name "
        "(default: %(default)s).")
    add("--lr_warmup_steps", type=nonnegative_int, default=lr_warmup_steps, help="Linear warm-up steps (default: "
        "%(default)s); longer than the run, the LR never peaks.")
    add("--adam_beta1", type=beta, default=0.9)
    add("--adam_beta2", type=beta, default=0.999)
    add("--adam_weight_decay", type=nonnegative_float, default=adam_weight_decay)
    add("--adam_epsilon", type=positive_float, default=1e-8)
    add("--max_grad_norm", type=positive_float, default=1.0)
    add("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Default: accelerate config. fp16 "
        "on a CPU trains in float32 (accelerate has no fp16 autocast there; it says so); bf16 works on CPUs.")
    add("--gradient_checkpointing", action="store_true", help="Recompute the UNet's activations in the backward "
        "pass instead of keeping them: less memory for a larger batch, for another forward pass's compute; the "
        "same weights.")
    add("--seed", type=nonnegative_int, default=0, help="Seeds the data order and every random draw (train: the "
        "initial weights too).")
    add("--max_nonfinite_steps", type=positive_int, default=10, help="Stop (after a checkpoint) after this many "
        "non-finite losses in a row; isolated ones are skipped.")
    return group


def add_lifecycle_args(parser, output_dir, checkpointing_steps, report_to, tracker_project_name):
    """Output folder, checkpoints and resume, logging and trackers, processes, Hub: what lifecycle.py keeps.
    Returns the outputs group."""
    outputs = parser.add_argument_group("outputs, checkpoints, logging, processes")
    add = outputs.add_argument
    add("--output_dir", default=output_dir, help="The run's folder (default: %(default)s).")
    add("--checkpointing_steps", type=positive_int, default=checkpointing_steps, help="Write checkpoint-{step}/ "
        "this often (default: %(default)s).")
    add("--checkpoints_total_limit", type=positive_int, default=None, help="Keep only this many checkpoints.")
    add("--resume_from_checkpoint", default=None, help='"latest", a checkpoint-N folder of --output_dir (as in '
        "the diffusers examples) or a checkpoint's path.")
    add("--allow_resume_changes", action="store_true", help="Resume even though flags the run records (data, "
        "batch, processes, seed, objective; distill: teacher, guidance, grid) differ from the checkpoint's "
        "(utils/run/resume_check.py).")
    add("--logging_steps", type=positive_int, default=10, help="Log loss, grad norm and lr (window means) this "
        "often: values stay on the device in between (no per-step GPU sync).")
    add("--report_to", default=report_to, choices=["all", "none", *TRACKER_PACKAGES], help="accelerate tracker "
        "(default: %(default)s); refused at once when its package is not installed.")
    add("--tracker_project_name", default=tracker_project_name, help="The trackers' project (default: %(default)s).")
    add("--logging_dir", default="logs", help="Under --output_dir.")
    add("--validation_conditions", type=condition_id, nargs="+", default=VALIDATION_CONDITIONS, metavar="ID",
        help="Condition ids (age*14 + gender*7 + race) of the samples the run writes and logs, seed i for the "
        "i-th (default: %(default)s: young, middle-aged, old).")
    add_ddp_timeout_arg(outputs)
    add = parser.add_argument_group("hub").add_argument
    add("--push_to_hub", action="store_true", help="Upload the release (weights, model card, samples).")
    add("--hub_model_id", type=uploads.repo_id_arg, default=None,
        help="user/repo (default: the output folder's name under your account).")
    add("--hub_private_repo", action="store_true")
    return outputs

