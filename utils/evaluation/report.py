"""The markdown report of a metrics dict written by evaluate_fairface.py."""

from ..labels import ATTRIBUTES, describe_condition
from .fidelity import BELOW_MEAN_POINTS


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
    shares, below = metrics.get("training_share") or {}, metrics.get("below_mean") or {}
    for group_by, names in ATTRIBUTES.items():
        lines += ["", f"### Accuracy per {group_by} group (generated / real)", "",
                  f"Training share: the group's share of the training images (`{s['dataset_name']}`, "
                  f"{', '.join(s['train_splits'])}). ▼: all three right {BELOW_MEAN_POINTS:g}+ points under the mean of "
                  f"the {group_by} groups.", "",
                  _row(group_by, "training share", "n gen", *measured), "|---|---:|---:|---:|---:|---:|---:|"]
        for name in names:
            g = {m: gen["per_group"][m][f"by_{group_by}"][name] for m in measured}
            r = {m: real["per_group"][m][f"by_{group_by}"][name] for m in measured}
            share = shares.get(f"by_{group_by}", {}).get(name)
            mark = " ▼" if name in below.get(f"by_{group_by}", []) else ""
            if g["all"]["count"] + r["all"]["count"]:  # skip groups none of the evaluated conditions belongs to
                lines.append(_row(name + mark, fmt_percent(share), g["all"]["count"],
                                  *[f"{fmt_percent(g[m]['accuracy'])} / {fmt_percent(r[m]['accuracy'])}"
                                    for m in measured]))
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

    if metrics.get("by_framing"):  # evaluate_fairface.py --framing: generated and real images of each framing
        lines += ["## Per framing", "", "Images sampled with each requested framing, against real images of that "
                  "framing's FairFace config (tight = 0.25, wide = 1.25).", "",
                  _row("framing", *[f"{m} (gen / real)" for m in measured], "Fréchet distance", "n gen", "n real"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for framing, v in metrics["by_framing"].items():
            g, r = v["fidelity"]["generated"]["accuracy"], v["fidelity"]["real"]["accuracy"]
            lines.append(_row(framing, *[f"{fmt_percent(g.get(m))} / {fmt_percent(r.get(m))}" for m in measured],
                              fmt_number(v["frechet_distance"]), v["generated"], v["real"]))
        lines.append("")

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
