"""Which real images a generated dataset's generator learned from, so a test split can be checked against them.

A Classification Accuracy Score is honest only on real images the generator never saw. ``train_fairface.py``
merges train and validation by default, so FairFace's validation split -- the usual test split -- is often
training data. This reads what the runs left behind:

* the generated dataset names its model: ``generate_dataset.py``'s record in the folder (``model``: the absolute
  folder or the Hub id), else the card's provenance line ``- Model: `NAME` ...`` (utils/datasets/dataset_card.py),
  whose NAME is a Hub id or, for a local model, the folder's name only (looked for in the current folder);
* a local model's run folder holds checkpoints whose ``training_state.json`` records ``dataset_name`` (a local
  folder as its absolute path) and ``dataset_splits``, and any accepted change of them on resume
  (``resume_changes``); an ``epoch_N`` snapshot or a checkpoint is read through the run folder above it;
* a model card (local or the Hub's README.md) says ``splits train + validation merged`` after the dataset's Hub
  link, or after ``local folder `NAME``` (by name only: the card holds no local paths;
  utils/hub/model_card.py's ``describe_data``). A distilled student's card quotes its teacher's data too.

``split_seen_by_generator`` compares ``--dataset_name``/``--test_split`` with all of it. The configs do not
matter: FairFace's 0.25 and 1.25 are the same faces cropped twice.
"""

import os
import re
from dataclasses import dataclass

from ..run.checkpoints import list_checkpoints, read_training_state

_CARD_MODEL = re.compile(r"^- Model: `([^`]+)`", re.MULTILINE)
_CARD_HUB_DATA = re.compile(r"\[([^\]]+)\]\(https://huggingface\.co/datasets/\1\), configs [^,]*, splits (.+?) merged")
_CARD_LOCAL_DATA = re.compile(r"local (?:dataset )?folder `([^`]+)`.*?splits (.+?) merged")
_SNAPSHOT = re.compile(r"(epoch_\d+.*|checkpoint-\d+)")  # folders inside a run folder that hold weights


@dataclass(frozen=True)
class TrainingData:
    """One dataset the generator learned from: ``dataset`` is an absolute folder, a Hub id, or (``by_name``) only
    a local folder's name; ``source`` says where this was read."""
    dataset: str
    splits: tuple
    source: str
    by_name: bool = False

    def holds(self, dataset_name, split):
        """Whether ``split`` of ``dataset_name`` (evaluate_cas.py's flags) is among these images."""
        if split not in self.splits:
            return False
        if self.by_name:
            return os.path.isdir(dataset_name) and _folder_name(dataset_name) == self.dataset
        if os.path.isdir(dataset_name) or os.path.isabs(self.dataset):
            return os.path.realpath(dataset_name) == os.path.realpath(self.dataset)
        return dataset_name == self.dataset

    def describe(self):
        name = f"a local folder named {self.dataset}" if self.by_name else self.dataset
        return f"{' + '.join(self.splits)} of {name} ({self.source})"


def _folder_name(path):
    return os.path.basename(os.path.normpath(os.path.abspath(path)))


def _hub_card(repo_id, repo_type):
    """The README.md of a Hub repo (offline: from the Hub cache), or None."""
    import huggingface_hub

    try:
        path = huggingface_hub.hf_hub_download(repo_id, "README.md", repo_type=repo_type)
    except Exception:  # noqa: BLE001 - offline and not cached, no such repo, no card: all mean "unknown here"
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------ the model
def generator_of(synthetic, record):
    """(model as the dataset names it, where that was read) or (None, why not). ``record``: the dataset folder's
    generate_dataset.py record (None if it has none)."""
    if record and record.get("model"):
        return record["model"], "the dataset's generate_dataset.py record"
    card = _read_text(os.path.join(synthetic, "README.md")) if os.path.isdir(synthetic) else \
        _hub_card(synthetic, "dataset")
    match = _CARD_MODEL.search(card or "")
    if match:
        return match.group(1), "the dataset card"
    return None, f"{synthetic} has no generate_dataset.py record and no dataset card naming its model"


# ------------------------------------------------------------------------------------------------ its data
def _from_checkpoints(run_folder):
    found = []
    for _, checkpoint in list_checkpoints(run_folder):
        try:
            state = read_training_state(checkpoint)
        except (OSError, ValueError):
            continue  # listed as complete but unreadable: the other checkpoints still tell
        run = state.get("run") or {}
        source = f"{os.path.basename(checkpoint)}/training_state.json"
        if run.get("dataset_name") and run.get("dataset_splits"):
            found.append(TrainingData(run["dataset_name"], tuple(run["dataset_splits"]), source))
        # A resume that changed the data (--allow_resume_changes): the steps before it saw the old data.
        old = {change["flag"]: change["old"] for change in state.get("resume_changes", [])
               if change.get("flag") in ("dataset_name", "dataset_splits")}
        if old:
            found.append(TrainingData(old.get("dataset_name", run.get("dataset_name")),
                                      tuple(old.get("dataset_splits", run.get("dataset_splits") or ())),
                                      f"{source}, before a resume"))
    return found


def _from_card(text, source):
    found = [TrainingData(name, tuple(splits.split(" + ")), source) for name, splits in _CARD_HUB_DATA.findall(text)]
    found += [TrainingData(name, tuple(splits.split(" + ")), source, by_name=True)
              for name, splits in _CARD_LOCAL_DATA.findall(text)]
    return found


def training_data(model):
    """[TrainingData] of everything the model's folder or Hub repo says it learned from ([] if nothing)."""
    if os.path.isdir(model):
        folder = os.path.abspath(model)
        run_folder = os.path.dirname(folder) if _SNAPSHOT.fullmatch(os.path.basename(folder)) else folder
        found = _from_checkpoints(run_folder)
        for where in dict.fromkeys((folder, run_folder)):  # the snapshot's own card, if any, and the release's
            text = _read_text(os.path.join(where, "README.md"))
            if text:
                found += _from_card(text, f"the model card {_folder_name(where)}/README.md")
    elif "/" in model:
        text = _hub_card(model, "model")
        found = _from_card(text, f"the model card of {model} on the Hub") if text else []
    else:
        found = []
    unique = {}  # every checkpoint repeats the run's record: the first place that says it is named
    for data in found:
        unique.setdefault((data.dataset, data.splits, data.by_name), data)
    # A card's folder name that a run record knows as an absolute folder is that folder: the exact entry decides.
    exact = {(_folder_name(data.dataset), data.splits) for data in unique.values()
             if not data.by_name and os.path.isabs(data.dataset)}
    return [data for data in unique.values() if not (data.by_name and (data.dataset, data.splits) in exact)]


def split_seen_by_generator(synthetic, record, dataset_name, test_split):
    """("seen" | "unseen" | "unknown", one line saying why): whether the generator of ``synthetic`` trained on
    ``test_split`` of ``dataset_name``."""
    model, where = generator_of(synthetic, record)
    if model is None:
        return "unknown", where
    found = training_data(model)
    if not found:
        return "unknown", (f"{synthetic}'s model {model} (from {where}) has no run record or model card here that "
                           "names its training data")
    seen = [data for data in found if data.holds(dataset_name, test_split)]
    if seen:
        return "seen", f"{synthetic}'s model {model} trained on {seen[0].describe()}"
    return "unseen", f"{synthetic}'s model {model} trained on " + "; ".join(data.describe() for data in found)
