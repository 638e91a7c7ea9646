"""How common each group is, and giving rare groups their due: FairFace's own frequencies, the long-tailed demo
data's exact counts, and the per-image weights of balanced sampling and loss reweighting.

FairFace is balanced by race but long-tailed by age: its train split holds 25,598 faces in their twenties and
842 over 70 (``FAIRFACE_TRAIN_COUNTS``). Only the three marginals are published; a condition's share is assumed
to be the product of its age, gender and race shares (``condition_shares``).

Balancing by a group (an attribute, or the whole condition) gives image i the weight ``count(group of i) ** -power``,
scaled to a mean of 1 over the dataset: ``power`` 1 makes every group equally likely (inverse frequency), 0.5
(``sqrt``) halves the imbalance on a log scale (as repeat-factor sampling, Gupta et al. 2019, and Mahajan et al.
2018's square-root sampling). ``--balance_with sampling`` draws each epoch's images with these weights (with
replacement, the epoch's length unchanged; utils/data/fairface.py ``EpochSampler``), ``loss`` keeps the data
order and weighs each image's loss instead (class-balanced loss, Cui et al. 2019).
"""

import numpy as np

from ..labels import AGES, ATTRIBUTES, GENDERS, NUM_CONDITIONS, RACES

# FairFace's train split (86,744 faces) per label, in AGES / GENDERS / RACES order (HuggingFaceM4/FairFace, 0.25).
FAIRFACE_TRAIN_COUNTS = {
    "age": (1792, 10408, 9103, 25598, 19250, 10744, 6228, 2779, 842),
    "gender": (45986, 40758),
    "race": (12287, 12319, 12233, 16527, 9216, 13367, 10795),
}
DISTRIBUTIONS = ("uniform", "fairface")
BALANCE_GROUPS = ("none", "age", "gender", "race", "condition")
BALANCE_METHODS = ("sampling", "loss")
assert [len(FAIRFACE_TRAIN_COUNTS[a]) for a in ATTRIBUTES] == [len(AGES), len(GENDERS), len(RACES)]


def condition_shares(distribution):
    """Each condition's share (126 floats summing to 1): ``uniform``, or ``fairface`` = the product of FairFace's
    age, gender and race shares (the joint counts are not published)."""
    if distribution == "uniform":
        return np.full(NUM_CONDITIONS, 1.0 / NUM_CONDITIONS)
    if distribution != "fairface":
        raise ValueError(f"unknown distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    age, gender, race = (np.asarray(FAIRFACE_TRAIN_COUNTS[a], dtype=np.float64) for a in ATTRIBUTES)
    # Raveled in (age, gender, race) order: index age*14 + gender*7 + race, the condition id (utils/labels.py).
    return np.einsum("a,g,r->agr", age / age.sum(), gender / gender.sum(), race / race.sum()).ravel()


def condition_counts(num_images, distribution):
    """Exact images per condition (126 ints summing to ``num_images``): the shares rounded by largest remainder,
    ties to the lower id. Raises ValueError when a condition would get no image."""
    raw = num_images * condition_shares(distribution)
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[:num_images - counts.sum()]] += 1
    if counts.min() == 0:
        rarest = int(np.argmin(raw))
        raise ValueError(f"{num_images} images with the {distribution!r} distribution leave condition {rarest} "
                         f"without an image (about {int(np.ceil(1 / condition_shares(distribution)[rarest]))} images give it one)")
    return counts


def group_of(attributes, balance_by):
    """Group index per image: the attribute's label, or the condition id. ``attributes``: int (N, >=3) = age,
    gender, race (unknown = -1 is its own group)."""
    attributes = np.asarray(attributes, dtype=np.int64)
    if balance_by == "condition":
        age, gender, race = attributes[:, 0], attributes[:, 1], attributes[:, 2]
        known = (age >= 0) & (gender >= 0) & (race >= 0)
        return np.where(known, age * 14 + gender * 7 + race, -1)
    return attributes[:, list(ATTRIBUTES).index(balance_by)]


def balance_weights(attributes, balance_by, power):
    """Per-image weights, ``count(group) ** -power`` scaled to mean 1; None when ``balance_by`` is "none" or its
    groups are equally common already (nothing to balance: the epoch stays a permutation, every image once)."""
    if balance_by in (None, "none"):
        return None
    groups = group_of(attributes, balance_by)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if counts.min() == counts.max():
        return None
    weights = counts[inverse].astype(np.float64) ** -float(power)
    return weights / weights.mean()


def describe_balance(args, nothing_to_balance=False):
    """One line for the log and the model card: what the run's data balancing does (``nothing_to_balance``: the
    groups were equally common, ``balance_weights`` gave None)."""
    if args.balance_by == "none":
        return "no balancing: images drawn as often as the data holds them"
    if nothing_to_balance:
        return f"--balance_by {args.balance_by}: its groups are equally common in this data, nothing to balance"
    strength = {0.5: "sqrt", 1.0: "full"}.get(float(args.balance_power), f"power {args.balance_power:g}")
    what = "sampled" if args.balance_with == "sampling" else "loss weighted"
    return f"images {what} by {args.balance_by} frequency ** -{args.balance_power:g} ({strength})"
