"""Fetch part of a hub repository, or use a local folder in its place, failing fast and clearly offline.

:func:`resolve_source` is the one door to the hub: the engine's hub-id sources
(:func:`swudi_lab.merge.io.open_checkpoint`), and the benchmark's models and test sets
(:mod:`swudi_lab.hub.heads`, :mod:`swudi_lab.hub.data`). A path to an existing folder is used as it is; a path to an existing folder is used as it is; anything else is a hub
id, fetched with ``huggingface_hub.snapshot_download`` restricted to ``allow_patterns``.

Offline behaviour, decided at call time (not only when ``huggingface_hub`` was first imported):

* ``HF_HUB_OFFLINE=1``: only the local hub cache is used; if the files are not there,
  :class:`HubUnavailableError` is raised at once, naming the repository and the patterns.
* otherwise the repository is first probed with one ``repo_info`` call under a short ``timeout``
  (``HF_ENDPOINT`` is honoured); a refused or timed-out connection falls back to the cache and,
  failing that, raises :class:`HubUnavailableError` within about ``timeout`` seconds instead of
  waiting on the hub client's unbounded default.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

from ..files import require_extra as require

__all__ = ["HubUnavailableError", "resolve_source", "is_local", "is_hub_id", "hub_offline", "match_files"]

_TRUE = {"1", "on", "yes", "true"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class HubUnavailableError(FileNotFoundError):
    """A hub repository (or the files asked of it) could not be fetched and is not in the local cache."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or the legacy ``TRANSFORMERS_OFFLINE``) is set now, or was at import."""
    if any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def is_local(source) -> bool:
    """True when ``source`` names an existing local folder (then it is never sent to the hub)."""
    return isinstance(source, (str, os.PathLike)) and Path(source).expanduser().is_dir()


def match_files(root: Path, patterns) -> list[Path]:
    """Files under ``root`` whose path relative to ``root`` (with ``/``) matches one of ``patterns``, sorted."""
    root = Path(root)
    out = set()
    for path in root.rglob("*"):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            if any(fnmatch.fnmatchcase(rel, p) for p in patterns):
                out.add(path)
    return sorted(out)


def resolve_source(source, *, repo_type: str, allow_patterns, what: str, timeout: float = 10.0,
                   revision: str | None = None, cache_dir=None) -> Path:
    """The local folder holding ``source``'s files matching ``allow_patterns``.

    ``source`` is a local folder (returned as it is) or a hub repository id (``owner/name``).
    ``what`` names the thing in error messages ("test set of eurosat"). Raises
    :class:`HubUnavailableError` when the hub cannot be reached (offline, refused, timed out) and the
    cache does not hold the files.
    """
    if is_local(source):
        return Path(source).expanduser()
    repo_id = str(source)
    if not _HUB_ID.fullmatch(repo_id):
        raise FileNotFoundError(f"{what}: {repo_id!r} is neither an existing folder nor a hub id (owner/name)")
    hf = require("huggingface_hub")
    patterns = list(allow_patterns)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{repo_type} {repo_id!r} (files {patterns})"
    hint = ("; put the files in a local folder and pass its path instead, or fetch them once while online"
            if repo_type == "dataset" else
            "; pass a local folder (save_pretrained) instead, or fetch it once while online")

    def from_cache(reason: str) -> Path:
        try:
            return Path(hf.snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                             allow_patterns=patterns, cache_dir=cache_dir,
                                             local_files_only=True))
        except Exception as e:  # not cached (LocalEntryNotFoundError, IncompleteSnapshotError, ...)
            raise HubUnavailableError(f"could not fetch {what}: {where} — {reason}, and it is not in the "
                                      f"local hub cache ({type(e).__name__}){hint}") from None

    if hub_offline():
        return from_cache("HF_HUB_OFFLINE is set")
    api = hf.HfApi(endpoint=endpoint)
    try:
        api.repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=timeout)
    except Exception as e:
        name = type(e).__name__
        if _is_connection_error(e):
            return from_cache(f"the hub at {endpoint or api.endpoint} is unreachable ({name}: {_first_line(e)})")
        if name in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
            raise HubUnavailableError(f"could not fetch {what}: {where} — {name}: {_first_line(e)}") from None
        return from_cache(f"the hub answered {name}: {_first_line(e)}")
    # the hub answered within `timeout`: download (by the revision asked, not info.sha, so that the
    # cache records the branch -> commit ref and a later offline call finds the snapshot)
    try:
        return Path(hf.snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                         allow_patterns=patterns, cache_dir=cache_dir, endpoint=endpoint))
    except Exception as e:
        if _is_connection_error(e):
            return from_cache(f"the download failed ({type(e).__name__}: {_first_line(e)})")
        raise


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _is_connection_error(e: BaseException) -> bool:
    """A refused, reset or timed-out connection (whatever HTTP library the hub client uses)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, (ConnectionError, TimeoutError)) or name in (
                "ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError",
                "ProxyError", "OfflineModeIsEnabled", "RemoteProtocolError", "PoolTimeout", "WriteTimeout",
                "ConnectionError", "Timeout"):
            return True
        e = e.__cause__ or e.__context__
    return False
