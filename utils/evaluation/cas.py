"""Classification Accuracy Score (Ravuri & Vinyals 2019, "train on synthetic, test on real").

One small CNN with an age, a gender and a race head is trained from scratch, with the same architecture, seed and
number of steps, on each training set (synthetic images, as many real images, both); every classifier is then
tested on real images the generator never saw. Accuracy per attribute and per group (``fidelity_metrics``) shows
which groups synthetic data serves worse than real data.
"""

import numpy as np
import torch
from torch import nn

from ..labels import ATTRIBUTES
from .fidelity import fidelity_metrics
from .report import fmt_percent


class SmallCNN(nn.Module):
    """Four stride-2 convolutions (32-256 channels), global average pooling, one linear head per attribute."""

    def __init__(self, width=32):
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({a: nn.Linear(channels, len(names)) for a, names in ATTRIBUTES.items()})

    def forward(self, pixels):
        features = self.body(pixels)
        return {a: head(features) for a, head in self.heads.items()}


def to_tensor(images):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], in one float buffer (no temporaries of its size)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)


def train_classifier(images, labels, steps, batch_size=64, learning_rate=1e-3, seed=0, device="cpu"):
    """A SmallCNN trained for ``steps`` AdamW steps on uint8 ``images`` (N, H, W, 3) and ``labels`` {attribute:
    int array}; batches drawn by a seeded shuffle per epoch, random horizontal flips. ``images``: an array, or
    anything that gives one for ``images[rows]`` (decoded_images.DecodedImages: one batch in memory at a time)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    targets = {a: torch.as_tensor(np.asarray(v), dtype=torch.long) for a, v in labels.items()}
    order, position = torch.randperm(len(images), generator=generator), 0
    model.train()
    for _ in range(steps):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        index = order[position: position + batch_size]
        position += batch_size
        pixels = to_tensor(images[index.numpy()]).to(device)
        flip = torch.rand(len(index), generator=generator) < 0.5
        pixels[flip] = pixels[flip].flip(-1)
        outputs = model(pixels)
        loss = sum(nn.functional.cross_entropy(outputs[a], targets[a][index].to(device)) for a in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model, images, batch_size=256, device="cpu"):
    """{attribute: predicted label per image}, a batch of ``images`` at a time."""
    # Written into arrays allocated once: small per-batch arrays kept to the end land between the batches' large
    # freed buffers on the C heap and keep it from shrinking, so memory grew with the number of test images
    # (236 MB more for 12,000 images at 64 px; 42 MB like this).
    out = {a: np.empty(len(images), dtype=np.int64) for a in ATTRIBUTES}
    for start in range(0, len(images), batch_size):
        logits = model(to_tensor(images[start: start + batch_size]).to(device))
        for a in ATTRIBUTES:
            out[a][start: start + batch_size] = logits[a].argmax(-1).cpu().numpy()
    return out


def classification_accuracy_scores(training_sets, test_images, test_labels, steps, **options):
    """{name: fidelity_metrics of the classifier trained on that set, on the real test images}."""
    condition_ids = test_labels["age"] * 14 + test_labels["gender"] * 7 + test_labels["race"]
    results = {}
    for name, (images, labels) in training_sets.items():
        model = train_classifier(images, labels, steps, **options)
        predictions = predict(model, test_images, device=options.get("device", "cpu"))
        results[name] = fidelity_metrics(test_labels, predictions, condition_ids)
        results[name].pop("per_condition")
        print(f"{name}: trained on {len(images)} images; test accuracy " +
              ", ".join(f"{a} {fmt_percent(v)}" for a, v in results[name]["accuracy"].items()))
    return results


def cas_markdown(results, caption):
    """Accuracy per attribute, then each attribute's accuracy within each of its groups (per-class recall), one
    column per training set; metrics.json has every attribute's accuracy within every group."""
    names = list(results)
    lines = [caption, "", "| test accuracy | " + " | ".join(f"trained on {n}" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    lines += [f"| {a} | " + " | ".join(fmt_percent(results[n]["accuracy"][a]) for n in names) + " |"
              for a in (*ATTRIBUTES, "all")]
    for group_by, labels in ATTRIBUTES.items():
        lines += ["", f"{group_by.capitalize()} accuracy per {group_by} group (the recall of each label, Ravuri & "
                  "Vinyals' per-class CAS; n = real test images):", "",
                  f"| {group_by} | n | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        for label in labels:
            cells = [results[n]["per_group"][group_by][f"by_{group_by}"][label] for n in names]
            lines.append(f"| {label} | {cells[0]['count']} | " + " | ".join(fmt_percent(c["accuracy"]) for c in cells)
                         + " |")
    return "\n".join(lines) + "\n"
