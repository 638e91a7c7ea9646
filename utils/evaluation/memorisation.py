"""Memorisation: every generated image's nearest training image, against real images the model did not see.

``evaluate_fairface.py`` reports the share of generated images closer to a training image than real unseen images
usually are; ``generate_dataset.py --check_memorisation`` flags each row of a dataset the same way (``NearCopyCheck``).
"""

import os

import numpy as np
import torch

from ..files.atomic_files import write_file_atomic
from ..cli import percentile, positive_int
from .features import record_features, unit_rows


def add_memorisation_args(add):
    """The flags of the memorisation check, shared by evaluate_fairface.py and generate_dataset.py."""
    add("--feature_model", default="facebook/dinov2-base", help="Vision backbone (AutoModel) whose pooled/CLS "
        "features are used for nearest training images (and, in the evaluation, Fréchet distance and diversity).")
    add("--dataset_config_names", nargs="+", default=["0.25", "1.25"], help="FairFace configs the model saw.")
    add("--train_splits", nargs="+", default=["train", "validation"],
        help="Splits the model was trained on (train_fairface.py's --dataset_splits): the training pool.")
    add("--max_train_pool", type=positive_int, default=None,
        help="Search nearest neighbours in a seeded random subset of this many training images (default: all).")
    add("--num_heldout", type=positive_int, default=1000, help="Reference images for the memorisation threshold.")
    add("--memorisation_percentile", type=percentile, default=5.0,
        help="Threshold = this percentile of the reference images' nearest-training-image distances (default: "
        "%(default)s: about 5 %% of new faces fall below it by chance).")


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


def memorisation_threshold(reference_distances, percentile=5.0):
    """The ``percentile``-th percentile of the finite ``reference_distances`` (None if there are none): by
    construction, ``percentile`` % of real unseen images fall below it."""
    reference = np.asarray(reference_distances, dtype=np.float64)
    reference = reference[np.isfinite(reference)]
    return float(np.percentile(reference, percentile)) if len(reference) else None


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
    threshold = memorisation_threshold(reference, percentile)
    if threshold is None or not len(generated):
        return {"threshold": None, "share": None, "expected_share": percentile / 100.0, "percentile": percentile,
                "generated": int(len(generated)), "reference": int(len(reference))}

    def stats(values):
        return {"min": float(values.min()), "median": float(np.median(values)), "mean": float(values.mean())}

    return {"threshold": threshold, "share": float(np.mean(generated < threshold)),
            "expected_share": percentile / 100.0, "percentile": percentile,
            "generated": int(len(generated)), "reference": int(len(reference)),
            "generated_distance": stats(generated), "reference_distance": stats(reference)}


def reference_distances(pool, pool_index, pool_features, num, rng, heldout_features=None, device="cpu"):
    """Nearest-training-image distances of real images the model did not see, and a sentence saying which.

    With ``heldout_features`` (of images of a split the model did not see, chosen by the caller) those; else
    leave-one-out: ``num`` seeded training images, each against the pool (``pool_features`` of ``pool_index``)
    without itself and its copy at the other padding."""
    if heldout_features is not None:
        distances, _ = nearest_neighbours(heldout_features, pool_features, device=device)
        return distances, f"{len(heldout_features)} images of the held-out split"
    chosen = np.sort(rng.choice(len(pool_index), size=min(num, len(pool_index)), replace=False))
    keys = pool.keys[pool_index]
    exclude = [np.flatnonzero(keys == keys[position]) for position in chosen]
    distances, _ = nearest_neighbours(pool_features[chosen], pool_features, exclude, device=device)
    return distances, (f"leave-one-out: {len(chosen)} training images, each against the pool without itself"
                       + (" and its copy at the other padding" if pool.aligned else ""))


class NearCopyCheck:
    """Per image: the cosine distance to its nearest training image, and whether it is below the threshold (the
    ``percentile``-th percentile of the same distance for real images the model did not see, leave-one-out).

    The training pool's features and the threshold are computed once and kept in ``cache_path`` (an .npz written
    atomically), so other processes and reruns load them instead of encoding the pool again."""

    def __init__(self, extractor, pool, resolution, percentile, num_reference, max_train_pool=None, seed=0,
                 batch_size=64, num_workers=0, cache_path=None, device="cpu"):
        self.extractor, self.device, self.percentile = extractor, device, percentile
        if cache_path and os.path.exists(cache_path):
            with np.load(cache_path) as saved:
                self.pool_features, self.threshold = saved["pool_features"], float(saved["threshold"])
                self.reference_kind = str(saved["reference_kind"])
            return
        rng = np.random.default_rng(seed)
        pool_index = np.arange(len(pool))
        if max_train_pool and max_train_pool < len(pool):
            pool_index = np.sort(rng.choice(len(pool), size=max_train_pool, replace=False))
        self.pool_features = record_features(extractor, pool, pool_index, resolution, batch_size, num_workers,
                                             progress=True, desc="training pool features")
        reference, self.reference_kind = reference_distances(pool, pool_index, self.pool_features, num_reference,
                                                             rng, device=device)
        self.threshold = memorisation_threshold(reference, percentile)
        if self.threshold is None:
            raise ValueError("no usable training images to compare generated images with")
        if cache_path:
            write_file_atomic(cache_path, lambda f: np.savez(f, pool_features=self.pool_features,
                                                             threshold=self.threshold,
                                                             reference_kind=self.reference_kind), mode="wb")

    def __call__(self, images):
        """(distances, near_copy) of PIL images: float64 (N,) and bool (N,)."""
        distances, _ = nearest_neighbours(self.extractor(images), self.pool_features, device=self.device)
        return distances, np.nan_to_num(distances, nan=np.inf) < self.threshold


def load_near_copy_check(args, state, device, resolution, cache_path):
    """generate_dataset.py --check_memorisation: the NearCopyCheck of ``args``' training images and flags, built
    by one process per disk and kept at ``cache_path``, loaded by the other processes and by reruns."""
    from ..cli import fail, load_or_fail
    from ..data.fairface import load_fairface
    from ..run.distributed import in_writer_order
    from .features import FeatureExtractor
    from .samples import RealPool

    extractor = load_or_fail("feature model", args.feature_model,
                             lambda: FeatureExtractor(args.feature_model, device, args.batch_size))

    def build_or_load():
        try:
            pool = RealPool([((config, split), load_fairface(args.dataset_name, [config], [split]))
                             for config in args.dataset_config_names for split in args.train_splits])
            return NearCopyCheck(extractor, pool, resolution, args.memorisation_percentile, args.num_heldout,
                                 args.max_train_pool, args.seed, args.batch_size, device=device, cache_path=cache_path)
        except (ValueError, OSError) as error:
            fail(f"--check_memorisation: cannot read the training images of {args.dataset_name!r}: {error}")

    return in_writer_order(state, build_or_load)
