"""Writing files so that nothing partial is ever left behind; hashing them.

Every file swudi_lab writes goes through this module: it is written to a temporary file in the
target's own directory (so the final rename stays on one filesystem), flushed to disk, and renamed
over the target only when the write succeeded. A failure (an exception, a full disk, an interrupt)
leaves the target as it was and removes the temporary file.

* :func:`atomic_write_text` / :func:`atomic_write_bytes` -- a whole file at once;
* :func:`atomic_open` -- a file object (``csv.writer``, ``json.dump``);
* :func:`atomic_path` -- a temporary path for writers that want a file name
  (``safetensors.torch.save_file``, ``numpy.savez``);
* :class:`AtomicFile` -- the same with explicit :meth:`~AtomicFile.commit` / :meth:`~AtomicFile.abort`,
  for writers that stream over many calls (:class:`swudi_lab.merge.io.SafetensorsWriter`);
* :func:`atomic_dir` -- a whole directory, built beside the target and renamed into place;
* :func:`sha256_file` -- the hex digest the zoo's manifests record;
* :func:`require_extra` -- import a package of an optional extra, or a one-line error naming it.

Written files get mode ``0o644`` (``tempfile`` creates them ``0o600``). At the bottom of the
import layers: standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = [
    "AtomicFile",
    "atomic_path",
    "atomic_open",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_dir",
    "sha256_file",
    "require_extra",
]

FILE_MODE = 0o644


class AtomicFile:
    """A temporary file beside ``path`` (``.<name>.<random><suffix>``), created empty.

    Write to :attr:`tmp` (by name), then :meth:`commit` (fsync and rename onto ``path``) or
    :meth:`abort` (remove it; ``path`` is untouched). As a context manager it commits when the
    block succeeds and aborts when it raises. ``suffix``: the temporary name's ending, for
    writers that look at it (``numpy.savez`` appends ``.npz`` unless the name ends with it).
    """

    def __init__(self, path: str | os.PathLike, suffix: str = ".tmp"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        """Flush the temporary file to disk and rename it onto ``path`` (the writer must have closed it)."""
        if not self.tmp.is_file():
            raise FileNotFoundError(f"temporary file {self.tmp} for {self.path} is gone: nothing to commit")
        try:
            fd = os.open(self.tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(self.tmp, FILE_MODE)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (if still there); ``path`` is left as it was."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; renamed onto ``path`` when the block succeeds.

    ::

        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp))
    """
    with AtomicFile(path, suffix) as f:
        yield f.tmp


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode, **kwargs)`` through a temporary file: the target appears, complete, at exit.

    ``mode``: ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``; ``kwargs`` go to
    :func:`open` (``encoding``, ``newline``).
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_open({str(path)!r}): mode {mode!r} does not write a new file (use 'w' or 'wb')")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default); returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; it replaces ``path`` when the block succeeds.

    An existing ``path`` is removed only then, just before the rename; when the block raises the
    temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def require_extra(module: str, extra: str = "hub"):
    """Import ``module`` (a package of the optional ``extra``) or raise a one-line ``ImportError``.

    The message names the extra: ``pip install "swudi_lab[hub]"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f'{module} is not installed: this needs the {extra} extra, '
                          f'pip install "swudi_lab[{extra}]" ({e})') from None
