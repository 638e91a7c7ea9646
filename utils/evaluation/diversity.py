"""Diversity: mean pairwise cosine distance of the features of the images of one condition."""

import numpy as np

from ..labels import ATTRIBUTES, decode_condition
from .features import unit_rows
from .fidelity import finite


def mean_pairwise_cosine_distance(features):
    """Mean of 1 - cos(f_i, f_j) over pairs i < j; None for fewer than 2 rows."""
    if len(features) < 2:
        return None
    unit = unit_rows(features)
    similarity = unit @ unit.T
    upper = np.triu_indices(len(unit), k=1)
    return float(np.mean(1.0 - similarity[upper]))


def diversity_by_condition(features, condition_ids):
    """{condition id: mean pairwise cosine distance} for the conditions with at least 2 images."""
    condition_ids = np.asarray(condition_ids)
    out = {}
    for c in np.unique(condition_ids):
        value = mean_pairwise_cosine_distance(features[condition_ids == c])
        if value is not None:
            out[int(c)] = value
    return out


def summarise_diversity(per_condition):
    """{"mean", "by_age"|"by_gender"|"by_race": {label: mean over the conditions of that group}}."""
    summary = {"mean": finite(np.mean(list(per_condition.values()))) if per_condition else None}
    for position, (attribute, names) in enumerate(ATTRIBUTES.items()):
        summary[f"by_{attribute}"] = {}
        for index, name in enumerate(names):
            values = [v for c, v in per_condition.items() if decode_condition(c)[position] == index]
            summary[f"by_{attribute}"][name] = float(np.mean(values)) if values else None
    summary["per_condition"] = {str(c): v for c, v in sorted(per_condition.items())}
    return summary
