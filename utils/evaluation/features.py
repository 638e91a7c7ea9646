"""Image features from a vision backbone (DINOv2 by default), for generated images and streamed pool records."""

import os

import numpy as np
import torch
from PIL import Image

from ..model.pipeline import has_pickled_weights_only


def unit_rows(features):
    """Feature rows scaled to unit length (cosine distances are then 1 - dot products)."""
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def from_pretrained_safetensors(model_class, model_id):
    """``model_class.from_pretrained(model_id)`` from safetensors only: a folder or repo that holds only pickled
    weights is refused (ValueError / OSError, one line), never unpickled, as utils.model.pipeline does for pipelines."""
    if os.path.isdir(model_id) and has_pickled_weights_only(model_id):
        raise ValueError(f"{model_id} holds only pickled weights (.bin/.pt); refusing to unpickle them. "
                         "Convert them to safetensors first.")
    return model_class.from_pretrained(model_id, use_safetensors=True)


def batches(items, batch_size):
    for start in range(0, len(items), batch_size):
        yield items[start: start + batch_size]


def to_pil(images):
    return [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
            for image in images]


class FeatureExtractor:
    """Image features from a transformers vision backbone (DINOv2 by default): the pooled output, else the CLS
    token. ``__call__(images)`` -> float32 array (N, D)."""

    def __init__(self, model_id, device="cpu", batch_size=32):
        from transformers import AutoImageProcessor, AutoModel

        self.model_id, self.device, self.batch_size = model_id, device, batch_size
        self.model = from_pretrained_safetensors(AutoModel, model_id).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_id)

    def preprocess(self, images):
        """Images (PIL or uint8 arrays) -> pixel_values tensor (the model's own resize, crop and normalisation)."""
        return self.processor(images=to_pil(images), return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def embed(self, pixel_values):
        output = self.model(pixel_values=pixel_values.to(self.device, self.model.dtype))
        pooled = getattr(output, "pooler_output", None)
        features = pooled if pooled is not None else output.last_hidden_state[:, 0]
        return features.float().flatten(1).cpu().numpy()

    def __call__(self, images):
        out = [self.embed(self.preprocess(batch)) for batch in batches(list(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


class _DecodedRecords(torch.utils.data.Dataset):
    def __init__(self, pool, indices, resolution):
        self.pool, self.indices, self.resolution = pool, indices, resolution

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        from ..data.fairface import decode_image

        return decode_image(self.pool.record(int(self.indices[i])), self.resolution)


class _Preprocess:
    """Data-loader collate: decoded images -> (pixel_values of the usable ones or None, usable flags)."""

    def __init__(self, extractor):
        self.processor = extractor.processor

    def __call__(self, images):
        usable = [image for image in images if image is not None]
        pixels = self.processor(images=to_pil(usable), return_tensors="pt")["pixel_values"] if usable else None
        return pixels, [image is not None for image in images]


def record_features(extractor, pool, indices, resolution, batch_size=64, num_workers=0, progress=False,
                    desc="features"):
    """Features (len(indices), D) of pool records, NaN rows for unusable images.

    Streamed: records are decoded (``utils.data.fairface.decode_image`` at ``resolution``, as the generated images) and
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
