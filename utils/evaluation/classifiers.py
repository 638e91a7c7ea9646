"""Age, gender and race read from images: a zero-shot CLIP, or FairFace-trained image classifiers."""

import numpy as np
import torch

from ..labels import ATTRIBUTES, decode_condition, parse_label
from .features import batches, from_pretrained_safetensors, to_pil


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



class CLIPAttributeClassifier:
    """Zero-shot age/gender/race classifier from a CLIP model (Hub id or local folder with its processor)."""

    kind = "zero-shot CLIP"

    def __init__(self, model_id, attributes=tuple(ATTRIBUTES), device="cpu", batch_size=32):
        from transformers import AutoModel, AutoProcessor

        self.model_id, self.attributes, self.device, self.batch_size = model_id, tuple(attributes), device, batch_size
        self.model = from_pretrained_safetensors(AutoModel, model_id).to(device).eval()
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
        for batch in batches(to_pil(images), self.batch_size):
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
        self.model = from_pretrained_safetensors(AutoModelForImageClassification, model_id).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_id)
        self.mapping = label_mapping(self.model.config.id2label, attribute)
        self.missing = [ATTRIBUTES[attribute][i] for i in range(len(ATTRIBUTES[attribute])) if i not in self.mapping]

    @torch.no_grad()
    def predict(self, images):
        (attribute,) = self.attributes
        num_labels, out = len(ATTRIBUTES[attribute]), []
        for batch in batches(to_pil(images), self.batch_size):
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            logits = self.model(pixel_values=pixels.to(self.device, self.model.dtype)).logits.float()
            model_probabilities = logits.softmax(-1).cpu().numpy()
            ours = np.zeros((len(batch), num_labels))
            for model_class, label in enumerate(self.mapping):  # several model classes may share one label
                ours[:, label] += model_probabilities[:, model_class]
            out.append(ours)
        return {attribute: np.concatenate(out) if out else np.zeros((0, num_labels))}


class DemoAttributeClassifier:
    """``--classifier demo``: reads age, gender and race from utils/data/demo_data.py's drawn faces by their colours
    (``measure_attributes``), as one-hot probabilities. Only meaningful for models trained on demo data."""

    kind, model_id, attributes = "demo faces read by pixels", "demo", tuple(ATTRIBUTES)

    def predict(self, images):
        from ..data.demo_data import measure_attributes

        measured = measure_attributes(to_pil(images)) if len(images) else {a: np.zeros(0, int) for a in ATTRIBUTES}
        return {a: np.eye(len(names))[measured[a]].reshape(-1, len(names)) for a, names in ATTRIBUTES.items()}


CLIP_DEFAULT = "openai/clip-vit-large-patch14"


def add_classifier_args(add, model_default=False):
    """The classifier flags of evaluate_fairface.py and generate_dataset.py (``add``: an argument group's
    add_argument). ``model_default``: --classifier defaults to None, for the script to choose by the model (the
    demo reader for a model trained on demo data, else ``CLIP_DEFAULT``)."""
    add("--classifier", default=None if model_default else CLIP_DEFAULT,
        help="CLIP model (Hub id or folder) for zero-shot age/gender/race classification ('demo': read the drawn "
             "faces of --demo models by their colours). Default: " + (
                 f"demo for a model whose card says it was trained on demo data, else {CLIP_DEFAULT}."
                 if model_default else "%(default)s."))
    add("--age_classifier", default=None, help="AutoModelForImageClassification checkpoint with FairFace age labels "
        "(id2label names such as '0-2', 'more than 70'); replaces CLIP for age.")
    add("--gender_classifier", default=None, help="Same, gender ('Male'/'Female', 'man'/'woman', ...).")
    add("--race_classifier", default=None, help="Same, race ('East Asian', 'Latino_Hispanic', ...).")


def load_classifiers(args, device, load):
    """{attribute: classifier} for add_classifier_args' flags; ``load(what, name, loader)`` runs a loader with a
    one-line error (utils.cli.load_or_fail). Attributes without their own classifier share one CLIP (or demo)."""
    classifiers = {}
    for attribute in ATTRIBUTES:
        name = getattr(args, f"{attribute}_classifier")
        if name:
            classifiers[attribute] = load(f"{attribute} classifier", name, lambda: ImageClassifierAttribute(
                name, attribute, device, args.batch_size))
    zero_shot = [attribute for attribute in ATTRIBUTES if attribute not in classifiers]
    if zero_shot:  # CLIP for the attributes without their own classifier, loaded once
        shared = DemoAttributeClassifier() if args.classifier == "demo" else load(
            "classifier", args.classifier, lambda: CLIPAttributeClassifier(args.classifier, zero_shot, device,
                                                                           args.batch_size))
        classifiers.update({attribute: shared for attribute in zero_shot})
    for classifier in set(classifiers.values()):
        if getattr(classifier, "missing", None):
            print(f"warning: {classifier.model_id} cannot predict {', '.join(classifier.missing)}")
    return {attribute: classifiers[attribute] for attribute in ATTRIBUTES}


def predict_all(classifiers, images):
    """{attribute: probabilities (N, labels)}, each shared classifier run once over the images."""
    probabilities, done = {}, {}
    for attribute, classifier in classifiers.items():
        if id(classifier) not in done:
            done[id(classifier)] = classifier.predict(images)
        probabilities[attribute] = done[id(classifier)][attribute]
    return probabilities


def classify(classifiers, images):
    """{attribute: predicted label indices (N,)}, each shared classifier run once over the images."""
    return {a: p.argmax(-1).astype(np.int64) for a, p in predict_all(classifiers, images).items()}


def describe_classifiers(classifiers):
    """{attribute: "model (kind)"}, noting labels a classifier cannot predict (its accuracy there is 0)."""
    out = {}
    for attribute, c in classifiers.items():
        missing = getattr(c, "missing", None)
        out[attribute] = f"{c.model_id} ({c.kind}" + (f"; cannot predict {', '.join(missing)})" if missing else ")")
    return out


def requested_label_scores(classifiers, images, condition_ids, checked):
    """Probabilities of the requested labels (n, 3) and whether the ``checked`` attributes' are the top labels."""
    requested = np.array([decode_condition(c) for c in condition_ids]).reshape(-1, 3)
    probabilities = predict_all(classifiers, images)
    p = np.stack([probabilities[a][np.arange(len(images)), requested[:, i]] for i, a in enumerate(ATTRIBUTES)], 1)
    top = np.stack([probabilities[a].argmax(-1) == requested[:, i]
                    for i, a in enumerate(ATTRIBUTES) if a in checked], 1)
    return p, top.all(axis=1)
