"""A Hugging Face Space next to a released model: the demo page (app.py) running on the Hub.

    python -m utils.hub OUTPUT_DIR --hub_model_id user/repo --space     # model user/repo, Space user/repo-demo

The Space holds ``app.py`` and the modules of this repository it imports (found by following its imports, so
the Space runs the same code-free loader as a local ``python app.py``), a ``requirements.txt`` (those packages'
lower bounds from ours; the Space's gradio comes from ``sdk_version``) and a ``README.md`` whose metadata makes it
a gradio Space and names the model (``models: [user/repo]``): that link shows on the model's Hub page, and it is
where app.py reads the model id from when it runs on a Space. The model is loaded from the Hub by repo id, so the
Space needs no weights of its own; the model card links to the Space.
"""

import ast
import importlib.metadata
import os
import re
import tempfile

import huggingface_hub

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP = "app.py"
# What app.py and the utils/ modules it imports need at run time; gradio is the Space SDK's own.
SPACE_PACKAGES = ("torch", "diffusers", "safetensors", "huggingface_hub", "pillow", "numpy", "tqdm")


def imported_modules(path):
    """Dotted names of everything the repository file ``path`` imports, relative imports resolved: each module,
    and for ``from x import y`` also ``x.y`` (y may be a module). Also used by tests/test_layout.py."""
    package = os.path.dirname(path).split("/")
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            here = package[:len(package) - node.level + 1] if node.level else []  # `from ..x`: one folder up
            base = ".".join(filter(None, [*here, node.module or ""]))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def app_files(entry=APP):
    """``entry`` and every module of this repository it imports, transitively (paths relative to the repo)."""
    found, todo = [], [entry]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.append(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a package's __init__.py and the module itself
                stem = os.path.join(*parts[:depth])
                for candidate in (f"{stem}.py", os.path.join(stem, "__init__.py")):
                    if os.path.isfile(os.path.join(REPO, candidate)):
                        todo.append(candidate.replace(os.sep, "/"))
    return sorted(found)


def space_requirements():
    """requirements.txt lines of SPACE_PACKAGES, with our lower bounds."""
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return [line for line in lines if re.split(r"[<>=!~\[ ;]", line)[0].lower() in SPACE_PACKAGES]


def space_card(model_id, space_id):
    try:
        gradio_version = importlib.metadata.version("gradio")  # the version the app was tested with here
    except importlib.metadata.PackageNotFoundError:
        gradio_version = None
    data = huggingface_hub.SpaceCardData(
        title=space_id.split("/")[-1], sdk="gradio", sdk_version=gradio_version, app_file=APP, models=[model_id],
        license="mit", tags=["diffusers", "faces", "fairface"], emoji="🙂", colorFrom="indigo", colorTo="gray",
        pinned=False, short_description="Attribute-conditioned face diffusion (age, gender, race)")
    return huggingface_hub.SpaceCard(
        f"---\n{data.to_yaml()}\n---\n\n# {space_id.split('/')[-1]}\n\nThe fairface-diffusion demo page for "
        f"[{model_id}](https://huggingface.co/{model_id}): pick an age group, gender and race (or leave them to "
        "the model) and see faces; the Atlas tab draws all 126 conditions. Call it from Python with "
        f"`gradio_client`: `Client(\"{space_id}\").predict(\"20-29\", \"Female\", \"any\", 4, 0, 2.0, 25, "
        "api_name=\"/generate\")`.\n")


def write_space(folder, model_id, space_id):
    """The Space's files in ``folder``: app.py and its modules, requirements.txt, README.md."""
    for path in app_files():
        os.makedirs(os.path.join(folder, os.path.dirname(path)), exist_ok=True)
        with open(os.path.join(REPO, path), "rb") as source, open(os.path.join(folder, path), "wb") as target:
            target.write(source.read())
    with open(os.path.join(folder, "requirements.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(space_requirements()) + "\n")
    space_card(model_id, space_id).save(os.path.join(folder, "README.md"))


def space_id_for(args, model_id):
    """--hub_space_id, or the model's repo id + ``-demo`` (same account)."""
    return args.hub_space_id or f"{model_id}-demo"


def create_space(args, model_id):
    """The Space's RepoUrl, created if needed as a gradio Space (private with --hub_private_repo)."""
    return huggingface_hub.create_repo(space_id_for(args, model_id), repo_type="space", space_sdk="gradio",
                                       private=True if args.hub_private_repo else None, exist_ok=True)


def upload_space(space_id, model_id):
    """Upload the Space's files in one commit; the Space (re)builds and serves the page."""
    with tempfile.TemporaryDirectory() as folder:
        write_space(folder, model_id, space_id)
        huggingface_hub.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder,
                                      commit_message=f"Demo app for {model_id}")
    return f"https://huggingface.co/spaces/{space_id}"
