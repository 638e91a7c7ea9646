"""Memorisation: every generated image's nearest training image, against real images the model did not see."""

import numpy as np
import torch

from .features import unit_rows


def nearest_neighbours(queries, pool, exclude=None, chunk_size=256, device="cpu"):
    """Cosine distance (1 - cos) from every query to its nearest pool row, and that row's index.

    ``exclude``: optional list (one per query) of pool indices that query may not match (itself, its copies).
    NaN rows (unusable images) never match; a query of NaNs gets distance NaN and index -1.
    """
    queries, pool = np.asarray(queries, dtype=np.float32), np.asarray(pool, dtype=np.float32)
    valid_pool = np.isfinite(pool).all(axis=1)
    pool_t = torch.from_numpy(np.nan_to_num(unit_rows(pool)).astype(np.float32)).to(device)
    distances, indices = np.full(len(queries), np.nan), np.full(len(queries), -1, dtype=np.int64)
    if not len(pool) or not valid_pool.any():
        return distances, indices
    invalid = torch.from_numpy(~valid_pool).to(device)
    for start in range(0, len(queries), chunk_size):
        block = queries[start: start + chunk_size]
        ok = np.isfinite(block).all(axis=1)
        q = torch.from_numpy(np.nan_to_num(unit_rows(block)).astype(np.float32)).to(device)
        similarity = q @ pool_t.T
        similarity[:, invalid] = -float("inf")
        if exclude is not None:
            for row, excluded in enumerate(exclude[start: start + chunk_size]):
                if len(excluded):
                    similarity[row, torch.as_tensor(np.asarray(excluded), device=device)] = -float("inf")
        best, where = similarity.max(dim=1)
        best, where = best.cpu().numpy().astype(np.float64), where.cpu().numpy()
        found = ok & np.isfinite(best)
        distances[start: start + len(block)][found] = 1.0 - best[found]
        indices[start: start + len(block)][found] = where[found]
    return distances, indices


def memorisation(generated_distances, reference_distances, percentile=5.0):
    """Share of generated images closer to their nearest training image than real unseen images usually are.

    ``reference_distances``: nearest-training-image cosine distances of real images the model did not see (a
    held-out split, or training images compared with the pool minus themselves). ``threshold`` is their
    ``percentile``-th percentile, so by construction ``percentile`` % of real unseen images fall below it: a
    model that draws new faces has ``share`` near ``expected_share``; a clearly larger share means generated
    images sit unusually close to particular training images (copies or near-copies, worth looking at).
    """
    generated = np.asarray(generated_distances, dtype=np.float64)
    reference = np.asarray(reference_distances, dtype=np.float64)
    generated, reference = generated[np.isfinite(generated)], reference[np.isfinite(reference)]
    if not len(reference) or not len(generated):
        return {"threshold": None, "share": None, "expected_share": percentile / 100.0, "percentile": percentile,
                "generated": int(len(generated)), "reference": int(len(reference))}
    threshold = float(np.percentile(reference, percentile))

    def stats(values):
        return {"min": float(values.min()), "median": float(np.median(values)), "mean": float(values.mean())}

    return {"threshold": threshold, "share": float(np.mean(generated < threshold)),
            "expected_share": percentile / 100.0, "percentile": percentile,
            "generated": int(len(generated)), "reference": int(len(reference)),
            "generated_distance": stats(generated), "reference_distance": stats(reference)}
