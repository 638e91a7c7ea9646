"""A virtual environment with only torch, diffusers and safetensors (and what pip installs with them): where a
user with no fairface-diffusion code loads a release with plain diffusers (tests/test_hub.py).

    python tests/clean_venv.py DIR      # .ci/run: make it once; the tests take it from $FAIRFACE_CLEAN_VENV

The versions are those of the interpreter running this, so the clean run tests the libraries the suite tests.
"""

import importlib.metadata
import os
import subprocess
import sys

PACKAGES = ("torch", "diffusers", "safetensors")


def requirements():
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in PACKAGES]


def make_clean_venv(folder, timeout=1800):
    """Path of the venv's python, after creating the venv and installing PACKAGES if needed.

    Raises RuntimeError with pip's last line when they cannot be installed (e.g. no package index reachable)."""
    python = os.path.join(folder, "bin", "python")
    if not os.path.isfile(python):
        subprocess.run([sys.executable, "-m", "venv", folder], check=True, timeout=300)
    if subprocess.run([python, "-c", "import torch, diffusers, safetensors"], capture_output=True).returncode:
        result = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                 *requirements()], capture_output=True, text=True, timeout=timeout)
        if result.returncode:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"pip could not install {' '.join(requirements())} into {folder}: {last}")
    return python


if __name__ == "__main__":
    print(make_clean_venv(sys.argv[1]))
