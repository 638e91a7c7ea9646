"""Evaluating a trained model: attribute fidelity, quality and diversity per group, memorisation (issue 8).

Everything ``evaluate_fairface.py`` computes lives here, as small functions on numpy arrays that can be tested
against hand-computed values; the models (a zero-shot CLIP or FairFace-trained image classifiers, a DINOv2
feature model) are thin wrappers around ``transformers`` ``from_pretrained`` (offline from the Hub cache with
``HF_HUB_OFFLINE=1``).

* **Attribute fidelity**: every image is classified for age, gender and race; accuracy is measured against the
  requested condition (generated images) or the dataset label (real images, the classifier's own ceiling).
* **Fréchet distance** between generated and real images in a self-supervised feature space (DINOv2 CLS token),
  overall and per group, with ``scipy.linalg.sqrtm`` as in pytorch-fid.
* **Diversity**: mean pairwise cosine distance of the features of the images of one condition.
* **Memorisation**: the cosine distance of every generated image to its nearest training image, compared with
  the same distance for real images the model did not see (``memorisation``).
* **Drawing** (PIL only) of the plots, and the markdown report.
"""

import math
import os
import re
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .labels import ATTRIBUTES, NUM_CONDITIONS, decode_condition, describe_condition, parse_label

SHORT_NAMES = {  # compact axis labels for the plots
    "age": ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"),
    "gender": ("Male", "Female"),
    "race": ("E Asian", "Indian", "Black", "White", "Mid East", "Latino", "SE Asian"),
}


# ------------------------------------------------------------------------------------------- sample files
SAMPLE_PATTERN = re.compile(r"cond(\d{1,3})(?!\d)")  # the condition id anywhere in a file name: cond042_...
SEED_PATTERN = re.compile(r"seed(\d+)")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def find_samples(folder, condition_ids=None):
    """[(path, condition_id, seed or None)] of the images in ``folder`` whose name holds ``cond<id>``.

    Any image name containing ``cond`` followed by the id (``cond42``, ``cond042_...``) counts; other files are
    ignored, as are ids outside ``condition_ids`` (when given). Sorted by condition, then name.
    """
    wanted = None if condition_ids is None else set(condition_ids)
    found = []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        match = SAMPLE_PATTERN.search(name)
        if not match or int(match.group(1)) >= NUM_CONDITIONS:
            continue
        condition_id = int(match.group(1))
        if wanted is not None and condition_id not in wanted:
            continue
        seed = SEED_PATTERN.search(name)
        found.append((os.path.join(folder, name), condition_id, int(seed.group(1)) if seed else None))
    return sorted(found, key=lambda item: (item[1], item[0]))


def attribute_arrays(condition_ids):
    """Condition ids -> {"age": int array, "gender": ..., "race": ...}."""
    decoded = np.array([decode_condition(c) for c in condition_ids], dtype=np.int64).reshape(-1, 3)
    return {attribute: decoded[:, i] for i, attribute in enumerate(ATTRIBUTES)}


# ----------------------------------------------------------------------------------------------- classifiers
# Zero-shot CLIP: every label is described by a few phrases, each put into every template; the label's text
# embedding is the mean of the normalised embeddings (CLIP's prompt ensembling), normalised again.
CLIP_TEMPLATES = (
    "a photo of {}.",
    "a close-up photo of the face of {}.",
    "a cropped portrait photo of {}.",
    "a low resolution photo of the face of {}.",
)
CLIP_LABEL_PHRASES = {
    "age": (
        ("a baby", "a 1 year old baby"),
        ("a young child", "a 6 year old child"),
        ("a teenager", "a 15 year old teenager"),
        ("a person in their twenties", "a 25 year old person"),
        ("a person in their thirties", "a 35 year old person"),
        ("a person in their forties", "a 45 year old person"),
        ("a person in their fifties", "a 55 year old person"),
        ("a person in their sixties", "a 65 year old person"),
        ("a person over 70 years old", "a 78 year old person", "an elderly person"),
    ),
    "gender": (("a man", "a boy", "a male person"), ("a woman", "a girl", "a female person")),
    "race": (
        ("an East Asian person",),
        ("an Indian person", "a South Asian person"),
        ("a Black person",),
        ("a White person",),
        ("a Middle Eastern person",),
        ("a Latino person", "a Hispanic person"),
        ("a Southeast Asian person",),
    ),
}
assert all(len(CLIP_LABEL_PHRASES[a]) == len(names) for a, names in ATTRIBUTES.items())


def clip_prompts(attribute):
    """The prompts of every label of ``attribute``: a list (one per label) of lists of strings."""
    return [[template.format(phrase) for phrase in phrases for template in CLIP_TEMPLATES]
            for phrases in CLIP_LABEL_PHRASES[attribute]]


def label_mapping(id2label, attribute):
    """A classifier's ``config.id2label`` -> int array: model class index -> our label index for ``attribute``.

    Names are matched by ``utils.labels.parse_label`` (case, spacing and common spellings: "male", "70+",
    "Latino Hispanic"). Several model classes may map to one label (their probabilities are added). Raises
    ValueError listing the model's labels that match none of ours (and for bare numbers or generic LABEL_i names,
    which say nothing about what they are).
    """
    id2label = {int(k): v for k, v in dict(id2label).items()}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"classifier id2label keys are not 0..{len(id2label) - 1}: {sorted(id2label)}")
    mapping, unmapped = [], []
    for index in range(len(id2label)):
        name = str(id2label[index])
        target = None
        if not name.strip().isdigit():
            try:
                target = parse_label(attribute, name)
            except ValueError:
                target = None
        if target is None:
            unmapped.append(name)
        mapping.append(target)
    if unmapped:
        raise ValueError(f"{attribute} classifier labels {', '.join(repr(n) for n in unmapped)} match none of "
                         f"FairFace's {attribute} labels ({', '.join(ATTRIBUTES[attribute])})")
    return np.asarray(mapping, dtype=np.int64)


def _as_tensor(output):
    """transformers 4.x ``get_*_features`` return a tensor, 5.x an output whose pooler_output holds it."""
    return output if torch.is_tensor(output) else output.pooler_output


def _batches(items, batch_size):
    for start in range(0, len(items), batch_size):
        yield items[start: start + batch_size]


def _pil(images):
    return [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
            for image in images]


class CLIPAttributeClassifier:
    """Zero-shot age/gender/race classifier from a CLIP model (Hub id or local folder with its processor)."""

    kind = "zero-shot CLIP"

    def __init__(self, model_id, attributes=tuple(ATTRIBUTES), device="cpu", batch_size=32):
        from transformers import AutoModel, AutoProcessor

        self.model_id, self.attributes, self.device, self.batch_size = model_id, tuple(attributes), device, batch_size
        self.model = AutoModel.from_pretrained(model_id).to(device).eval()
        if not hasattr(self.model, "get_image_features") or not hasattr(self.model, "get_text_features"):
            raise ValueError(f"{model_id} is a {type(self.model).__name__}, not a CLIP-style image-text model")
        self.processor = AutoProcessor.from_pretrained(model_id)
        self.text_embeddings = {attribute: self._label_embeddings(attribute) for attribute in self.attributes}

    @torch.no_grad()
    def _label_embeddings(self, attribute):
        rows = []
        for prompts in clip_prompts(attribute):
            inputs = self.processor.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
            embedding = _as_tensor(self.model.get_text_features(**inputs.to(self.device))).float()
            embedding = torch.nn.functional.normalize(embedding, dim=-1).mean(0)
            rows.append(torch.nn.functional.normalize(embedding, dim=0))
        return torch.stack(rows)

    @torch.no_grad()
    def predict(self, images):
        """Images (PIL or uint8 arrays) -> {attribute: probabilities (N, number of labels)}."""
        probabilities = {attribute: [] for attribute in self.attributes}
        scale = self.model.logit_scale.exp().float() if hasattr(self.model, "logit_scale") else 100.0
        for batch in _batches(_pil(images), self.batch_size):
            pixels = self.processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            features = _as_tensor(self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype)))
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            for attribute in self.attributes:
                logits = scale * features @ self.text_embeddings[attribute].T
                probabilities[attribute].append(logits.softmax(-1).cpu().numpy())
        return {a: np.concatenate(p) if p else np.zeros((0, len(ATTRIBUTES[a]))) for a, p in probabilities.items()}


class ImageClassifierAttribute:
    """One attribute from an ``AutoModelForImageClassification`` checkpoint trained on FairFace-style labels."""

    kind = "image classifier"

    def __init__(self, model_id, attribute, device="cpu", batch_size=32):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.model_id, self.attributes, self.device, self.batch_size = model_id, (attribute,), device, batch_size
        self.model = AutoModelForImageClassification.from_pretrained(model_id).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_id)
        self.mapping = label_mapping(self.model.config.id2label, attribute)
        self.missing = [ATTRIBUTES[attribute][i] for i in range(len(ATTRIBUTES[attribute])) if i not in self.mapping]

    @torch.no_grad()
    def predict(self, images):
        (attribute,) = self.attributes
        num_labels, out = len(ATTRIBUTES[attribute]), []
        for batch in _batches(_pil(images), self.batch_size):
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            logits = self.model(pixel_values=pixels.to(self.device, self.model.dtype)).logits.float()
            model_probabilities = logits.softmax(-1).cpu().numpy()
            ours = np.zeros((len(batch), num_labels))
            for model_class, label in enumerate(self.mapping):  # several model classes may share one label
                ours[:, label] += model_probabilities[:, model_class]
            out.append(ours)
        return {attribute: np.concatenate(out) if out else np.zeros((0, num_labels))}


def classify(classifiers, images):
    """{attribute: predicted label indices (N,)}, each shared classifier run once over the images."""
    predictions, done = {}, {}
    for attribute, classifier in classifiers.items():
        if id(classifier) not in done:
            done[id(classifier)] = classifier.predict(images)
        predictions[attribute] = done[id(classifier)][attribute].argmax(-1).astype(np.int64)
    return predictions


def describe_classifiers(classifiers):
    """{attribute: "model (kind)"}, noting labels a classifier cannot predict (its accuracy there is 0)."""
    out = {}
    for attribute, c in classifiers.items():
        missing = getattr(c, "missing", None)
        out[attribute] = f"{c.model_id} ({c.kind}" + (f"; cannot predict {', '.join(missing)})" if missing else ")")
    return out


# ------------------------------------------------------------------------------------------------- features
class FeatureExtractor:
    """Image features from a transformers vision backbone (DINOv2 by default): the pooled output, else the CLS
    token. ``__call__(images)`` -> float32 array (N, D)."""

    def __init__(self, model_id, device="cpu", batch_size=32):
        from transformers import AutoImageProcessor, AutoModel

        self.model_id, self.device, self.batch_size = model_id, device, batch_size
        self.model = AutoModel.from_pretrained(model_id).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_id)

    def preprocess(self, images):
        """Images (PIL or uint8 arrays) -> pixel_values tensor (the model's own resize, crop and normalisation)."""
        return self.processor(images=_pil(images), return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def embed(self, pixel_values):
        output = self.model(pixel_values=pixel_values.to(self.device, self.model.dtype))
        pooled = getattr(output, "pooler_output", None)
        features = pooled if pooled is not None else output.last_hidden_state[:, 0]
        return features.float().flatten(1).cpu().numpy()

    def __call__(self, images):
        out = [self.embed(self.preprocess(batch)) for batch in _batches(list(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- real images
class RealPool:
    """Several (config, split) parts of a FairFace-layout dataset addressed by one flat index.

    ``parts``: [((config, split), datasets.Dataset with the image column undecoded)]. ``keys[i]`` identifies the
    photo of record ``i``: FairFace's configs hold the same photos at two paddings, in the same order, so parts
    of one split with equal length and identical labels in every row are taken to be copies and share keys
    (``aligned`` lists them); a photo and its copy are never each other's "nearest other image".
    """

    def __init__(self, parts):
        self.parts = list(parts)
        self.part_of = np.concatenate([np.full(len(ds), p) for p, (_, ds) in enumerate(self.parts)] or [[]]).astype(int)
        self.row_of = np.concatenate([np.arange(len(ds)) for _, ds in self.parts] or [[]]).astype(int)
        labels = [np.stack([np.asarray(ds[a]) for a in ATTRIBUTES], axis=1) for _, ds in self.parts]
        self.attributes = np.concatenate(labels).astype(np.int64) if labels else np.zeros((0, 3), np.int64)
        self.condition_ids = self.attributes @ np.array([14, 7, 1])
        self.keys, self.aligned = np.zeros(len(self), dtype=np.int64), []
        offset, owner = 0, []
        for p, ((config, split), ds) in enumerate(self.parts):
            same = next((q for q in owner if self.parts[q][0][1] == split and len(self.parts[q][1]) == len(ds)
                         and np.array_equal(labels[q], labels[p])), None)
            if same is None:
                owner.append(p)
                base = p
            else:
                base = same
                self.aligned.append((self.parts[same][0], (config, split)))
            self.keys[offset: offset + len(ds)] = base * 10_000_000 + np.arange(len(ds))
            offset += len(ds)

    def __len__(self):
        return len(self.part_of)

    def record(self, index):
        return self.parts[self.part_of[index]][1][int(self.row_of[index])]["image"]

    def source(self, index):
        (config, split), _ = self.parts[self.part_of[index]]
        return f"{config}/{split}#{int(self.row_of[index])}"


def sample_per_condition(condition_ids, wanted, per_condition, rng):
    """Indices of up to ``per_condition`` records (without replacement) of every id in ``wanted``; seeded by rng."""
    condition_ids = np.asarray(condition_ids)
    chosen = []
    for condition_id in wanted:
        candidates = np.flatnonzero(condition_ids == condition_id)
        if len(candidates):
            chosen.extend(rng.choice(candidates, size=min(per_condition, len(candidates)), replace=False).tolist())
    return np.asarray(chosen, dtype=np.int64)


class _DecodedRecords(torch.utils.data.Dataset):
    def __init__(self, pool, indices, resolution):
        self.pool, self.indices, self.resolution = pool, indices, resolution

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        from .data import decode_image

        return decode_image(self.pool.record(int(self.indices[i])), self.resolution)


class _Preprocess:
    """Data-loader collate: decoded images -> (pixel_values of the usable ones or None, usable flags)."""

    def __init__(self, extractor):
        self.processor = extractor.processor

    def __call__(self, images):
        usable = [image for image in images if image is not None]
        pixels = self.processor(images=_pil(usable), return_tensors="pt")["pixel_values"] if usable else None
        return pixels, [image is not None for image in images]


def record_features(extractor, pool, indices, resolution, batch_size=64, num_workers=0, progress=False,
                    desc="features"):
    """Features (len(indices), D) of pool records, NaN rows for unusable images.

    Streamed: records are decoded (``utils.data.decode_image`` at ``resolution``, as the generated images) and
    preprocessed in ``num_workers`` data-loader processes; only the features are kept.
    """
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(_DecodedRecords(pool, indices, resolution), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_Preprocess(extractor))
    rows = []
    for pixels, usable in tqdm(loader, desc=desc, disable=not progress):
        features = iter(extractor.embed(pixels) if pixels is not None else [])
        rows.extend(next(features) if ok else None for ok in usable)
    dim = next((len(r) for r in rows if r is not None), 1)
    return np.stack([r if r is not None else np.full(dim, np.nan, np.float32) for r in rows]) if rows \
        else np.zeros((0, dim), np.float32)


# -------------------------------------------------------------------------------------- attribute fidelity
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


def _finite(value):
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
              "accuracy": {k: _finite(float(np.mean(v)) if len(v) else None) for k, v in correct.items()},
              "confusion": {a: confusion_matrix(true[a], predicted[a], len(names)).tolist()
                            for a, names in ATTRIBUTES.items()},
              "per_group": {}}
    for measured, hits in correct.items():
        result["per_group"][measured] = {}
        for group_by, names in ATTRIBUTES.items():
            values, counts = group_accuracy(hits, true[group_by], len(names))
            result["per_group"][measured][f"by_{group_by}"] = {
                name: {"accuracy": _finite(v), "count": int(n)} for name, v, n in zip(names, values, counts)}
    condition_ids = np.asarray(condition_ids)
    result["per_condition"] = {}
    for c in np.unique(condition_ids):
        hits = correct["all"][condition_ids == c]
        result["per_condition"][str(c)] = {"accuracy": float(np.mean(hits)), "count": int(len(hits))}
    return result


# ---------------------------------------------------------------------------------------- Fréchet distance
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


# -------------------------------------------------------------------------------------------------- diversity
def _normalise(features):
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def mean_pairwise_cosine_distance(features):
    """Mean of 1 - cos(f_i, f_j) over pairs i < j; None for fewer than 2 rows."""
    if len(features) < 2:
        return None
    unit = _normalise(features)
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
    summary = {"mean": _finite(np.mean(list(per_condition.values()))) if per_condition else None}
    for position, (attribute, names) in enumerate(ATTRIBUTES.items()):
        summary[f"by_{attribute}"] = {}
        for index, name in enumerate(names):
            values = [v for c, v in per_condition.items() if decode_condition(c)[position] == index]
            summary[f"by_{attribute}"][name] = float(np.mean(values)) if values else None
    summary["per_condition"] = {str(c): v for c, v in sorted(per_condition.items())}
    return summary


# ---------------------------------------------------------------------------------------------- memorisation
def nearest_neighbours(queries, pool, exclude=None, chunk_size=256, device="cpu"):
    """Cosine distance (1 - cos) from every query to its nearest pool row, and that row's index.

    ``exclude``: optional list (one per query) of pool indices that query may not match (itself, its copies).
    NaN rows (unusable images) never match; a query of NaNs gets distance NaN and index -1.
    """
    queries, pool = np.asarray(queries, dtype=np.float32), np.asarray(pool, dtype=np.float32)
    valid_pool = np.isfinite(pool).all(axis=1)
    pool_t = torch.from_numpy(np.nan_to_num(_normalise(pool)).astype(np.float32)).to(device)
    distances, indices = np.full(len(queries), np.nan), np.full(len(queries), -1, dtype=np.int64)
    if not len(pool) or not valid_pool.any():
        return distances, indices
    invalid = torch.from_numpy(~valid_pool).to(device)
    for start in range(0, len(queries), chunk_size):
        block = queries[start: start + chunk_size]
        ok = np.isfinite(block).all(axis=1)
        q = torch.from_numpy(np.nan_to_num(_normalise(block)).astype(np.float32)).to(device)
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


# ------------------------------------------------------------------------------------------------- drawing
GENERATED_COLOUR, REAL_COLOUR, TEXT_COLOUR = (52, 110, 200), (170, 170, 170), (25, 25, 25)


def _font(size=13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw, text, font):
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def bar_panels(title, panels, series=("generated", "real"), colours=(GENERATED_COLOUR, REAL_COLOUR), max_value=1.0,
               value_format="{:.0%}"):
    """Horizontal grouped bars, panels side by side: ``panels`` = [(panel title, [(row label, [value per
    series or None]), ...])]. ``max_value`` None: the largest value. Returns a PIL image."""
    font, small, bold = _font(13), _font(11), _font(15)
    values = [v for _, rows in panels for _, vs in rows for v in vs if v is not None and np.isfinite(v)]
    top = max_value if max_value is not None else (max(values) if values else 1.0) or 1.0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 8 + max([_text_width(probe, label, font) for _, rows in panels for label, _ in rows] + [40])
    bar_h, gap, bar_w, value_w = 11, 7, 200, 48
    panel_w = label_w + bar_w + value_w
    rows_max = max(len(rows) for _, rows in panels)
    height = 60 + 24 + rows_max * (len(series) * bar_h + gap) + 10
    image = Image.new("RGB", (len(panels) * panel_w + 20, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill=TEXT_COLOUR, font=bold)
    x = 10 + _text_width(draw, title, bold) + 20
    for name, colour in zip(series, colours):  # legend
        draw.rectangle([x, 12, x + 12, 22], fill=colour)
        draw.text((x + 16, 9), name, fill=TEXT_COLOUR, font=small)
        x += 30 + _text_width(draw, name, small)
    for p, (panel_title, rows) in enumerate(panels):
        x0 = 10 + p * panel_w
        draw.text((x0 + label_w, 40), panel_title, fill=TEXT_COLOUR, font=font)
        y = 62
        for label, vs in rows:
            block = len(series) * bar_h
            draw.text((x0 + label_w - 6 - _text_width(draw, label, font), y + block / 2 - 8), label, fill=TEXT_COLOUR,
                      font=font)
            for s, value in enumerate(vs):
                yy = y + s * bar_h
                if value is None or not np.isfinite(value):
                    draw.text((x0 + label_w + 2, yy - 1), "n/a", fill=REAL_COLOUR, font=small)
                    continue
                length = int(round(bar_w * min(max(value / top, 0.0), 1.0)))
                draw.rectangle([x0 + label_w, yy, x0 + label_w + max(length, 1), yy + bar_h - 2], fill=colours[s])
                draw.text((x0 + label_w + length + 3, yy - 1), value_format.format(value), fill=TEXT_COLOUR, font=small)
            y += block + gap
        draw.line([x0 + label_w, 58, x0 + label_w, y], fill=(120, 120, 120))
    return image


def _vertical_text(text, font, colour=TEXT_COLOUR):
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    canvas = Image.new("RGBA", (right - left + 2, bottom - top + 4), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((-left + 1, -top + 2), text, fill=colour + (255,), font=font)
    return canvas.rotate(90, expand=True)


def confusion_heatmap(matrix, labels, title, cell=34):
    """Row-normalised confusion matrix (rows = requested/true, columns = predicted) with counts in the cells."""
    matrix = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    font, small, bold = _font(12), _font(10 if cell < 40 else 12), _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 10 + max(_text_width(probe, label, font) for label in labels)
    columns = [_vertical_text(label, font) for label in labels]
    top = 34 + max(c.height for c in columns) + 6
    image = Image.new("RGB", (label_w + n * cell + 30, top + n * cell + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill=TEXT_COLOUR, font=bold)
    for j, column in enumerate(columns):
        image.paste(column, (label_w + j * cell + (cell - column.width) // 2, top - 4 - column.height), column)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, np.maximum(rows, 1))
    for i in range(n):
        draw.text((label_w - 6 - _text_width(draw, labels[i], font), top + i * cell + cell / 2 - 8), labels[i],
                  fill=TEXT_COLOUR, font=font)
        for j in range(n):
            s = float(share[i, j])
            colour = tuple(int(round(255 - s * (255 - c))) for c in (20, 60, 150))  # white -> dark blue
            box = [label_w + j * cell, top + i * cell, label_w + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=colour, outline=(225, 225, 225) if i != j else (240, 150, 40))
            if matrix[i, j]:
                text = str(int(matrix[i, j]))
                draw.text((box[0] + (cell - _text_width(draw, text, small)) / 2, box[1] + cell / 2 - 7), text,
                          fill="white" if s > 0.5 else TEXT_COLOUR, font=small)
    draw.text((label_w, top + n * cell + 8), "rows: requested / true label, columns: predicted; colour: row share",
              fill=(90, 90, 90), font=_font(10))
    return image


def hstack(images, gap=16):
    """Images side by side on white, top-aligned."""
    width = sum(i.width for i in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(i.height for i in images)), "white")
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    return canvas


def pair_grid(pairs, cell=112, columns=4, title=None):
    """``pairs`` = [(generated image, training image, caption)] -> grid of side-by-side pairs with captions."""
    font = _font(11)
    rows = max(1, math.ceil(len(pairs) / columns))
    pair_w, pair_h = 2 * cell + 4 + 14, cell + 34
    head = 30 if title else 0
    canvas = Image.new("RGB", (columns * pair_w + 10, head + rows * pair_h + 6), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((8, 8), title, fill=TEXT_COLOUR, font=_font(14))
    for k, (generated, real, caption) in enumerate(pairs):
        x, y = 8 + (k % columns) * pair_w, head + (k // columns) * pair_h
        for offset, image in ((0, generated), (cell + 4, real)):
            if image is None:
                draw.rectangle([x + offset, y, x + offset + cell - 1, y + cell - 1], outline=REAL_COLOUR)
                continue
            tile = _pil([image])[0].convert("RGB")
            upscale = min(tile.size) < cell  # small images: keep their pixels visible
            tile = tile.resize((cell, cell), Image.Resampling.NEAREST if upscale else Image.Resampling.BICUBIC)
            canvas.paste(tile, (x + offset, y))
        draw.text((x, y + cell + 3), caption, fill=TEXT_COLOUR, font=font)
    return canvas


# -------------------------------------------------------------------------------------------------- report
def fmt_percent(value):
    return "n/a" if value is None else f"{100 * value:.1f}%"


def fmt_number(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


LIMITS_TEXT = """\
## What these numbers can and cannot say

* **Perceived, coarse labels.** FairFace's age, gender and race are labels annotators *perceived* in a photo, in
  coarse bins (9 age ranges, 2 genders, 7 race groups). Nobody's identity is measured; a "wrong" prediction may
  be a plausible face that an annotator would also have labelled differently.
* **The classifier has its own errors and biases.** Zero-shot CLIP learned from web captions; its age and race
  judgements are far from perfect and uneven across groups (Radford et al. 2021 report this on FairFace), and it
  carries the associations of its training data. Read every accuracy on generated images next to the same
  classifier's accuracy on real FairFace images of the same labels (the "real" column): that is its ceiling, and
  a group where even real images score low says more about the classifier than about the model. A checkpoint
  trained on FairFace labels (`--age_classifier` etc.) has a higher ceiling but inherits FairFace's own label noise.
* **Fréchet distances depend on the number of images.** With few images per group (compared with the feature
  width) the covariance estimate is poor and the distance is biased upwards; compare groups only at equal counts
  (they are, when every condition gets the same number of samples) and across models only with the same settings.
* **Memorisation** is a nearest-neighbour heuristic in one feature space, against the training pool searched
  (its size is in the settings): a small share does not prove that nothing was copied, and a large one points
  at pairs to look at, not at a verdict. Look at `nearest_neighbours.png`.
"""


def _row(*cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report_markdown(metrics):
    """The human-readable report (markdown) of a metrics dict written by evaluate_fairface.py."""
    s, counts = metrics["settings"], metrics["counts"]
    gen, real = metrics["fidelity"]["generated"], metrics["fidelity"]["real"]
    measured = ("age", "gender", "race", "all")
    classifiers = "; ".join(f"{a}: `{c}`" for a, c in metrics["classifiers"].items())
    lines = [f"# Evaluation of `{s['model_description']}`", "",
             f"{counts['generated']} generated images ({counts['conditions']} conditions), {counts['real']} real "
             f"images of the same conditions (`{s['dataset_name']}`, configs {', '.join(s['dataset_config_names'])}). "
             f"Classifiers: {classifiers}. Features: `{s['feature_model']}`.", ""]

    # Attribute fidelity
    lines += ["## Attribute fidelity", "",
              "Share of images whose predicted attribute is the requested one (generated) or the dataset label "
              "(real: the classifier's own ceiling). *all*: age, gender and race all right.", "",
              _row("attribute", "generated", "real (ceiling)", "generated / real"), "|---|---:|---:|---:|"]
    for key in measured:
        g, r = gen["accuracy"].get(key), real["accuracy"].get(key)
        lines.append(_row(key, fmt_percent(g), fmt_percent(r), "n/a" if g is None or not r else f"{g / r:.2f}"))
    for group_by, names in ATTRIBUTES.items():
        lines += ["", f"### Accuracy per {group_by} group (generated / real)", "",
                  _row(group_by, "n gen", *measured), "|---|---:|---:|---:|---:|---:|"]
        for name in names:
            g = {m: gen["per_group"][m][f"by_{group_by}"][name] for m in measured}
            r = {m: real["per_group"][m][f"by_{group_by}"][name] for m in measured}
            if g["all"]["count"] + r["all"]["count"]:  # skip groups none of the evaluated conditions belongs to
                lines.append(_row(name, g["all"]["count"], *[f"{fmt_percent(g[m]['accuracy'])} / "
                                                             f"{fmt_percent(r[m]['accuracy'])}" for m in measured]))
    worst = sorted(gen["per_condition"].items(), key=lambda kv: (kv[1]["accuracy"], int(kv[0])))[:10]
    lines += ["", "### Conditions drawn least faithfully (all three attributes right)", "",
              _row("id", "condition", "generated", "real"), "|---:|---|---:|---:|"]
    for c, v in worst:
        r = real["per_condition"].get(c, {}).get("accuracy")
        lines.append(_row(c, describe_condition(int(c)), fmt_percent(v["accuracy"]), fmt_percent(r)))
    lines.append("")
    for name in ("accuracy_by_race", "accuracy_by_gender", "accuracy_by_age", "confusion_race", "confusion_age",
                 "confusion_gender"):
        lines += [f"![{name}]({name}.png)", ""]

    # Quality
    fd = metrics["frechet_distance"]
    lines += ["## Quality: Fréchet distance to real images", "",
              f"Fréchet distance between generated and real images in `{s['feature_model']}` feature space (lower is "
              f"closer to real faces): **{fmt_number(fd['overall'])}** overall ({counts['generated']} vs "
              f"{counts['real']} images).", ""]
    for group_by, names in ATTRIBUTES.items():
        lines += [_row(group_by, "Fréchet distance", "n gen", "n real"), "|---|---:|---:|---:|"]
        for name in names:
            v = fd[f"by_{group_by}"][name]
            if v["generated"] + v["real"]:
                lines.append(_row(name, fmt_number(v["frechet_distance"]), v["generated"], v["real"]))
        lines.append("")
    lines += ["![frechet_by_group](frechet_by_group.png)", ""]

    # Diversity
    gen_div, real_div = metrics["diversity"]["generated"], metrics["diversity"]["real"]
    lines += ["## Diversity within a condition", "",
              "Mean pairwise cosine distance between the features of images of the same condition (0 = identical "
              "images), real images of the same condition for comparison. Mean over conditions: generated "
              f"**{fmt_number(gen_div['mean'])}**, real {fmt_number(real_div['mean'])}.", ""]
    for group_by, names in ATTRIBUTES.items():
        lines += [_row(group_by, "generated", "real"), "|---|---:|---:|"]
        lines += [_row(n, fmt_number(gen_div[f"by_{group_by}"][n]), fmt_number(real_div[f"by_{group_by}"][n]))
                  for n in names if fd[f"by_{group_by}"][n]["generated"]]
        lines.append("")
    least = sorted(gen_div["per_condition"].items(), key=lambda kv: kv[1])[:5]
    if least:
        lines += ["Least diverse conditions: " + ", ".join(f"{c} ({describe_condition(int(c))}) {v:.3f}"
                                                           for c, v in least) + ".", ""]

    # Memorisation
    mem = metrics["memorisation"]
    lines += ["## Memorisation", "",
              f"Nearest training image of every generated image (cosine distance in `{s['feature_model']}` space, "
              f"training pool of {counts['train_pool']} images). Reference: {mem['reference_kind']}. Threshold = "
              f"the {mem['percentile']:g}th percentile of the reference images' nearest-training-image distances = "
              f"**{fmt_number(mem['threshold'], 4)}**.", "",
              f"**{fmt_percent(mem['share'])}** of generated images are closer to a training image than that "
              f"(expected for a model that draws new faces: about {fmt_percent(mem['expected_share'])}).", ""]
    if mem.get("generated_distance"):
        stats = ("min", "median", "mean")
        lines += [_row("nearest-training distance", *stats), "|---|---:|---:|---:|",
                  _row("generated", *[fmt_number(mem["generated_distance"][k], 4) for k in stats]),
                  _row("real, unseen (reference)", *[fmt_number(mem["reference_distance"][k], 4) for k in stats]), ""]
    lines += ["![nearest_neighbours](nearest_neighbours.png)", "", LIMITS_TEXT]
    return "\n".join(lines)
