"""Fréchet distance between two sets of image features (as pytorch-fid, with ``scipy.linalg.sqrtm``)."""

import warnings

import numpy as np


def feature_statistics(features):
    """Mean and covariance (unbiased, rows = samples) of a feature matrix."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); as pytorch-fid.

    ``scipy.linalg.sqrtm`` of a singular product (fewer samples than dimensions) can fail or come out with
    non-finite or large imaginary parts: then ``eps`` is added to both diagonals and the root is taken again;
    remaining tiny imaginary parts are numerical noise and dropped.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LinAlgWarning on singular matrices: handled below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all() or (np.iscomplexobj(covmean)
                                              and np.abs(covmean.imag).max() > 1e-3 * max(1.0, np.abs(covmean).max())):
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance_between(features1, features2, eps=1e-6):
    """Fréchet distance between two feature sets (rows = images); None when either has fewer than 2 rows."""
    if len(features1) < 2 or len(features2) < 2:
        return None
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), eps=eps)


def frechet_by_group(generated, generated_groups, real, real_groups, names):
    """{label: {"frechet_distance", "generated", "real"}} for the groups (label indices) of one attribute."""
    out = {}
    for index, name in enumerate(names):
        g, r = generated[np.asarray(generated_groups) == index], real[np.asarray(real_groups) == index]
        out[name] = {"frechet_distance": frechet_distance_between(g, r), "generated": int(len(g)), "real": int(len(r))}
    return out
