"""Where swudi_lab reads and writes: one home for every directory.

Each directory comes from an environment variable first, then a default; the functions read the
environment at call time (nothing is fixed at import), so a test or a notebook can set a variable
and the next call follows it.

* ``SWUDI_LAB_DATA`` -- the data directory: the shipped pretrained base (``<data>/pretrained/``),
  the zoo's release pack (``<data>/zoo_release/``) and the task-image cache (``<data>/cache/tasks``).
  Default: the checkout's ``data/`` (beside the ``swudi_lab`` package) when it exists, else
  ``$XDG_DATA_HOME/swudi_lab`` (``~/.local/share/swudi_lab``).
* ``SWUDI_LAB_CACHE`` -- the zoo cache (``<cache>/seed<k>/``: float32 base, experts, heads,
  manifest). Default: ``<data>/zoo`` when the data directory is a checkout's or ``SWUDI_LAB_DATA``
  names it, else ``$XDG_CACHE_HOME/swudi_lab/zoo`` (``~/.cache/swudi_lab/zoo``).
* ``SWUDI_LAB_RESULTS`` -- where the demo and the benchmarks write (``<results>/demo``,
  ``<results>/bench``). Default: ``results`` in the current directory.
* ``SWUDI_LAB_DOWNLOADS`` -- torchvision datasets of the online recipe (:mod:`swudi_lab.zoo.online`).
  Default: ``$XDG_CACHE_HOME/swudi_lab/torchvision`` (``~/.cache/swudi_lab/torchvision``).

An empty variable counts as unset; ``~`` is expanded. The source checkout itself (benchmarks/,
tools/) is :func:`checkout_root`, ``None`` for an installed wheel. Pure functions of the environment
and the file system (nothing is created here), at the bottom of the import layers.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ENV_DATA",
    "ENV_CACHE",
    "ENV_RESULTS",
    "ENV_DOWNLOADS",
    "checkout_root",
    "data_dir",
    "pretrained_dir",
    "release_dir",
    "tasks_cache_dir",
    "zoo_dir",
    "results_dir",
    "demo_results_dir",
    "bench_results_dir",
    "downloads_dir",
]

ENV_DATA = "SWUDI_LAB_DATA"
ENV_CACHE = "SWUDI_LAB_CACHE"
ENV_RESULTS = "SWUDI_LAB_RESULTS"
ENV_DOWNLOADS = "SWUDI_LAB_DOWNLOADS"

_PACKAGE = Path(__file__).resolve().parents[1]  # .../swudi_lab


def _env(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var, "").strip()
    return (Path(base).expanduser() if base else Path.home() / fallback) / "swudi_lab"


def checkout_root() -> Path | None:
    """The source checkout holding the package (the directory with ``pyproject.toml`` beside
    ``swudi_lab/``), or ``None`` when swudi_lab is installed without its sources."""
    root = _PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() else None


def _checkout_data() -> Path | None:
    root = checkout_root()
    return root / "data" if root is not None and (root / "data").is_dir() else None


def data_dir() -> Path:
    """``$SWUDI_LAB_DATA``, else the checkout's ``data/``, else ``$XDG_DATA_HOME/swudi_lab``."""
    return _env(ENV_DATA) or _checkout_data() or _xdg("XDG_DATA_HOME", ".local/share")


def pretrained_dir() -> Path:
    """Shipped pretrained bases: ``<data>/pretrained`` (``<name>.safetensors`` + ``<name>.json``)."""
    return data_dir() / "pretrained"


def release_dir() -> Path:
    """The zoo's release pack: ``<data>/zoo_release`` (``seed<k>/``)."""
    return data_dir() / "zoo_release"


def tasks_cache_dir() -> Path:
    """Cached task images: ``<data>/cache/tasks``."""
    return data_dir() / "cache" / "tasks"


def zoo_dir() -> Path:
    """The zoo cache: ``$SWUDI_LAB_CACHE``, else ``<data>/zoo`` (checkout or ``$SWUDI_LAB_DATA``),
    else ``$XDG_CACHE_HOME/swudi_lab/zoo``."""
    explicit = _env(ENV_CACHE)
    if explicit is not None:
        return explicit
    data = _env(ENV_DATA) or _checkout_data()
    return data / "zoo" if data is not None else _xdg("XDG_CACHE_HOME", ".cache") / "zoo"


def results_dir() -> Path:
    """``$SWUDI_LAB_RESULTS``, else ``results`` (relative to the current directory)."""
    return _env(ENV_RESULTS) or Path("results")


def demo_results_dir() -> Path:
    """``swudi-lab demo``'s outputs: ``<results>/demo``."""
    return results_dir() / "demo"


def bench_results_dir() -> Path:
    """The benchmarks' outputs: ``<results>/bench``."""
    return results_dir() / "bench"


def downloads_dir() -> Path:
    """Downloaded torchvision datasets: ``$SWUDI_LAB_DOWNLOADS``, else ``$XDG_CACHE_HOME/swudi_lab/torchvision``."""
    return _env(ENV_DOWNLOADS) or _xdg("XDG_CACHE_HOME", ".cache") / "torchvision"
