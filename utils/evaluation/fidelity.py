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
