"""Where the package reads shipped data and writes its caches.

- ``DATA_DIR``: the repository's ``data/`` folder (shipped specs, the pretrained embedded model, cached
  results with provenance), or ``$FORGETTING_DATA`` when set (Colab installs the package from a clone
  and points this at the clone's ``data/``). Installed from the wheel, outside a checkout, it is the
  package's own ``_data/`` (in the checkout a link to ``data/``): the embedded models, the specs and the
  ledger rules, without the published results, whose runs are then computed into the cache.
- ``cache_dir()``: ``$FORGETTING_CACHE`` or ``~/.cache/forgetting``; used for anything the package builds
  when ``data/`` does not have it (for example the embedded model after its recipe changed).
- ``retrain()``: ``$FORGETTING_RETRAIN`` set (to anything but ``0``/``false``): ignore the published
  runs of the quick profile in ``data/results/`` and train them into the cache, so every table a
  chapter shows is computed from weights trained on this machine (the documented switch of the
  chapters and the Colab notebooks). The full profile's runs (hours of training, which chapters only
  read) are read from ``data/results/`` either way; ``make results`` remakes them.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
#: A checkout has ``pyproject.toml`` beside the package; an installed wheel does not.
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "data").is_dir()
DATA_DIR = Path(os.environ.get("FORGETTING_DATA", REPO_ROOT / "data" if IN_CHECKOUT else PACKAGE_DIR / "_data"))
SPECS_DIR = DATA_DIR / "specs"


def cache_dir() -> Path:
    """The writable cache folder (created on first use)."""
    root = Path(os.environ.get("FORGETTING_CACHE", Path.home() / ".cache" / "forgetting"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def quiet() -> bool:
    """True when progress bars should be silent (CI sets ``FORGETTING_QUIET=1``)."""
    return os.environ.get("FORGETTING_QUIET", "") not in ("", "0", "false", "False")


def retrain() -> bool:
    """True when ``$FORGETTING_RETRAIN`` asks to train the quick profile's runs instead of reading them."""
    return os.environ.get("FORGETTING_RETRAIN", "") not in ("", "0", "false", "False")
