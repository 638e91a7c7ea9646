"""utils/ reads as the architecture (issue 32): folders on floors, imports only downward, small modules.

The floor plan is utils/__init__.py's docstring; this test holds the code to it. A module imports from its own
folder and from lower floors; no script imports another; no module under utils/ outgrows one sitting.
"""

import ast
import glob
import os

import pytest

from conftest import REPO
from utils.hub.space import imported_modules  # the Space follows app.py's imports with it

# utils/__init__.py's floors. The loose modules at the top of utils/ are floor 0 with files/.
FLOORS = {"labels": 0, "cli": 0, "grid": 0, "files": 0, "data": 1, "model": 1, "hub": 2, "run": 3, "datasets": 4,
          "evaluation": 4}
COMMANDS = {"utils/hub/__main__.py"}  # `python -m utils.hub`: a command, like the scripts, may import any floor
# Old import paths printed by model cards already on the Hub: each only re-exports its new module.
ALIASES = {"utils/pipeline.py": "utils.model.pipeline"}
SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "*.py")))
MAX_LINES = 450
MAX_LOOSE_MODULES = 8


def utils_files():
    return sorted(os.path.relpath(p, REPO).replace(os.sep, "/")
                  for p in glob.glob(os.path.join(REPO, "utils", "**", "*.py"), recursive=True))


def group(folder):
    """The loose modules are one group: they may import each other (grid.py uses labels.py)."""
    return "loose" if folder in {"labels", "cli", "grid"} else folder


def folder_of(dotted):
    """'utils.run.checkpoints' -> 'run'; 'utils.labels' -> 'labels'; None outside utils or for utils itself."""
    parts = dotted.split(".")
    return parts[1] if parts[0] == "utils" and len(parts) > 1 else None


def test_every_import_runs_down_a_floor():
    upward = []
    for path in utils_files():
        source = folder_of(path[:-3].replace("/", "."))
        if path in COMMANDS or path in ALIASES or source not in FLOORS:
            continue
        for name in imported_modules(path):
            target = folder_of(name)
            if target in FLOORS and group(target) != group(source) and FLOORS[target] >= FLOORS[source]:
                upward.append(f"{path} imports {name} (floor {FLOORS[target]} from floor {FLOORS[source]})")
    assert not upward, "\n".join(upward)


def test_every_folder_is_on_a_floor_and_says_what_it_may_import():
    folders = {os.path.basename(os.path.dirname(p))
               for p in glob.glob(os.path.join(REPO, "utils", "*", "__init__.py"))}
    loose = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "utils", "*.py"))} - {"__init__"}
    aliases = {os.path.basename(path)[:-3] for path in ALIASES}
    assert folders | (loose - aliases) == set(FLOORS), \
        "a new folder or loose module needs its floor here and in utils/__init__.py"
    assert len(loose) <= MAX_LOOSE_MODULES
    with open(os.path.join(REPO, "utils", "__init__.py"), encoding="utf-8") as f:
        plan = ast.get_docstring(ast.parse(f.read()))
    for folder in folders:
        assert f"{folder}/" in plan, f"utils/__init__.py's floor plan does not name {folder}/"
        with open(os.path.join(REPO, "utils", folder, "__init__.py"), encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        assert f"Floor {FLOORS[folder]}" in doc and "May import" in doc, f"utils/{folder}/__init__.py"


def test_no_script_imports_another():
    found = []
    for path in [f"{s}.py" for s in SCRIPTS] + utils_files():
        for name in imported_modules(path):
            if name.split(".")[0] in SCRIPTS and name.split(".")[0] != path[:-3]:
                found.append(f"{path} imports {name}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", utils_files())
def test_modules_stay_readable_in_one_sitting(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        assert len(f.readlines()) <= MAX_LINES, f"{path}: split it by idea"


def test_the_old_card_snippet_still_imports_the_loader():
    """A release saved before the move carries a card whose snippet reads ``from utils.pipeline import
    load_pipeline``: it still runs, and it is the one loader."""
    import importlib

    card = os.path.join(REPO, "tests", "fixtures", "release-2026-12-before-utils-move", "README.md")
    with open(card, encoding="utf-8") as f:
        assert "from utils.pipeline import load_pipeline" in f.read()
    for alias, target in ALIASES.items():
        old, new = importlib.import_module(alias[:-3].replace("/", ".")), importlib.import_module(target)
        assert old.load_pipeline is new.load_pipeline and old.FairFacePipeline is new.FairFacePipeline
