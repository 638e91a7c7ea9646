"""Attribute fidelity: accuracy against the requested condition, confusion matrices, accuracy per group."""

import numpy as np

from ..labels import ATTRIBUTES


def accuracy(true, predicted):
    """Share of equal entries; NaN for no entries."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    return float(np.mean(true == predicted)) if true.size else float("nan")


def confusion_matrix(true, predicted, num_classes):
    """Counts (num_classes, num_classes): rows = true (requested) label, columns = predicted label."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def group_accuracy(correct, groups, num_groups):
    """Accuracy within each group: (accuracies with NaN for empty groups, counts), arrays of length num_groups."""
    correct, groups = np.asarray(correct, dtype=np.float64), np.asarray(groups, dtype=np.int64)
    counts = np.bincount(groups, minlength=num_groups)
    hits = np.bincount(groups, weights=correct, minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan), counts


def finite(value):
    return None if value is None or not np.isfinite(value) else float(value)


def fidelity_metrics(true, predicted, condition_ids):
    """Accuracies of one image set. ``true``/``predicted``: {attribute: int array}; ``condition_ids``: the true ids.

    Returns {"count", "accuracy": {age, gender, race, all}, "confusion": {attribute: matrix rows=true},
    "per_group": {attribute or "all": {"by_age"|"by_gender"|"by_race": {label: {"accuracy", "count"}}}},
    "per_condition": {id: {"accuracy": all-three-right share, "count"}}}; "all" = all three attributes right.
    """
    correct = {a: np.asarray(true[a]) == np.asarray(predicted[a]) for a in ATTRIBUTES}
    correct["all"] = np.logical_and.reduce([correct[a] for a in ATTRIBUTES])
    result = {"count": int(len(correct["all"])),
              "accuracy": {k: finite(float(np.mean(v)) if len(v) else None) for k, v in correct.items()},
              "confusion": {a: confusion_matrix(true[a], predicted[a], len(names)).tolist()
                            for a, names in ATTRIBUTES.items()},
              "per_group": {}}
    for measured, hits in correct.items():
        result["per_group"][measured] = {}
        for group_by, names in ATTRIBUTES.items():
            values, counts = group_accuracy(hits, true[group_by], len(names))
            result["per_group"][measured][f"by_{group_by}"] = {
                name: {"accuracy": finite(v), "count": int(n)} for name, v, n in zip(names, values, counts)}
    condition_ids = np.asarray(condition_ids)
    result["per_condition"] = {}
    for c in np.unique(condition_ids):
        hits = correct["all"][condition_ids == c]
        result["per_condition"][str(c)] = {"accuracy": float(np.mean(hits)), "count": int(len(hits))}
    return result


BELOW_MEAN_POINTS = 5.0  # a group this many points (or more) under the mean of its attribute's groups is marked


def training_shares(attributes):
    """{"by_age"|"by_gender"|"by_race": {label: share of the training images}} of int attributes (N, 3)."""
    attributes = np.asarray(attributes, dtype=np.int64).reshape(-1, len(ATTRIBUTES))
    total = max(len(attributes), 1)
    return {f"by_{a}": {name: float(n / total) for name, n in zip(names, np.bincount(attributes[:, i],
                                                                                     minlength=len(names)))}
            for i, (a, names) in enumerate(ATTRIBUTES.items())}


def groups_below_mean(per_group, points=BELOW_MEAN_POINTS):
    """{"by_age"|...: [labels]} whose all-three accuracy lies ``points`` or more under the mean of that attribute's
    evaluated groups (``per_group``: fidelity_metrics()["per_group"]["all"])."""
    out = {}
    for key, groups in per_group.items():
        values = {name: v["accuracy"] for name, v in groups.items() if v["count"] and v["accuracy"] is not None}
        mean = np.mean(list(values.values())) if values else None
        out[key] = [name for name, v in values.items() if mean is not None and v <= mean - points / 100]
    return out
