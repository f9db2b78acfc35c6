"""The TA8 test sets: parquet files from the hub or from a local folder in the same layout.

A test set is read with pyarrow one row group at a time and yields batches of CLIP-preprocessed
images, so SUN397's ~20k test images are never decoded at once. The schema is the hub's image
datasets': an ``image`` column (struct ``{bytes, path}`` with the encoded image in ``bytes``, or
plain binary) and an integer ``label`` column in the order of the task's class names.

Where the files come from (:func:`load_test_set`):

* ``source=None``: the task's hub dataset (``tanganke/eurosat``, ``ufldl-stanford/svhn`` config
  ``cropped_digits``, ...), fetched with ``snapshot_download`` restricted to the test split's parquet
  files and ``README.md`` (see :mod:`.fetch` for the offline behaviour);
* a hub id: the same, from another repository with the same layout;
* a local folder: its files matching the same path patterns (``data/test-*.parquet``, ...).

Preprocessing is CLIP's, without torchvision: resize the short side to ``image_size`` (bicubic,
PIL), centre crop, RGB, scale to [0, 1], normalise with OpenAI's mean and std.

``n_test=N`` keeps a seeded, class-balanced subsample (equal counts per class as far as the classes
allow; deterministic for a seed). The default is the whole split.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import require
from ..merge.fetch import match_files, resolve_source
from .tasks import TaskSpec, get_task

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "preprocess", "balanced_subsample", "test_files", "TestSet",
           "load_test_set"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(image, image_size: int = 224) -> torch.Tensor:
    """``(3, S, S)`` float32 tensor of a PIL image, as CLIP's preprocessing makes it (``S = image_size``).

    Resize so the short side is ``S`` (the long side scaled and truncated, as torchvision's
    ``Resize(S)``; bicubic), centre crop ``S x S`` (offsets rounded as torchvision's
    ``CenterCrop``), convert to RGB, scale to [0, 1], normalise with ``OPENAI_MEAN``/``OPENAI_STD``.
    The image is not modified.
    """
    from PIL import Image

    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    w, h = image.size
    if min(w, h) < 1:
        raise ValueError(f"image of size {w}x{h} is empty")
    if min(w, h) != image_size:
        if w <= h:
            size = (image_size, int(image_size * h / w))
        else:
            size = (int(image_size * w / h), image_size)
        image = image.resize(size, Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - image_size) / 2.0)), int(round((w - image_size) / 2.0))
    image = image.crop((left, top, left + image_size, top + image_size)).convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(OPENAI_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(OPENAI_STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).contiguous()


def balanced_subsample(labels, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` rows of ``labels``, as equal per class as the class sizes allow.

    Rows are drawn class by class in rounds: every class gives one (seeded, random) row per round
    while it has rows left, classes taken in a seeded order, until ``n`` rows are drawn. So counts
    differ by at most one between classes that are not exhausted. Deterministic for ``seed``;
    ``labels`` is not modified. ``n`` at least the number of rows returns them all.
    """
    labels = np.asarray(labels)
    if n < 1:
        raise ValueError(f"n_test must be >= 1, got {n}")
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order = rng.permutation(len(classes))
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for c in order:
            if depth < len(pools[c]):
                picked.append(int(pools[c][depth]))
                if len(picked) == n:
                    break
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


def test_files(task: "TaskSpec | str", source=None, *, timeout: float = 10.0, hub_cache_dir=None) -> list[Path]:
    """The parquet files of ``task``'s test split: from ``source`` (a local folder or hub id) or the task's hub dataset."""
    spec = get_task(task)
    source = spec.dataset_id if source is None else source
    patterns = list(spec.test_patterns)
    folder = resolve_source(source, repo_type="dataset", allow_patterns=patterns + ["README.md"],
                            what=f"test set of {spec.id} ({spec.config}/{spec.split})", timeout=timeout,
                            cache_dir=hub_cache_dir)
    files = match_files(folder, patterns)
    if not files:
        raise FileNotFoundError(f"test set of {spec.id}: no parquet file matching {patterns} under {folder}")
    return files


class TestSet:
    """The (sub-sampled) test split of one task, streamed as batches of preprocessed images.

    ``indices`` are the kept rows (global row numbers over ``files``, in file order) and ``labels``
    their labels. :meth:`batches` reads one parquet row group at a time and decodes only kept rows.
    """

    __test__ = False  # not a pytest class

    def __init__(self, task: "TaskSpec | str", files, *, n_test: int | None = None, seed: int = 0,
                 image_size: int = 224):
        pq = require("pyarrow.parquet")
        self.task = get_task(task)
        self.files = [Path(f) for f in files]
        self.image_size = int(image_size)
        self.seed = seed
        if not self.files:
            raise ValueError(f"test set of {self.task.id}: no files")
        labels, self._groups = [], []  # _groups: (file, row group, first global row, rows)
        start = 0
        for f in self.files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:
                raise ValueError(f"{f}: not a readable parquet file ({type(e).__name__}: {e})") from None
            names = pf.schema_arrow.names
            for col in ("image", "label"):
                if col not in names:
                    raise ValueError(f"{f}: no column {col!r} (columns: {names}); expected 'image' and 'label'")
            lab = pf.read(columns=["label"]).column("label").to_numpy(zero_copy_only=False)
            if lab.dtype.kind not in "iu":
                raise ValueError(f"{f}: column 'label' has dtype {lab.dtype}, expected integers")
            bad = (lab < 0) | (lab >= self.task.num_classes)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{f}: label {int(lab[row])} at row {row} is outside [0, {self.task.num_classes}) "
                                 f"for task {self.task.id!r}")
            labels.append(lab.astype(np.int64))
            for g in range(pf.metadata.num_row_groups):
                rows = pf.metadata.row_group(g).num_rows
                self._groups.append((f, g, start, rows))
                start += rows
        self._all_labels = np.concatenate(labels)
        self.indices = (np.arange(len(self._all_labels)) if n_test is None
                        else balanced_subsample(self._all_labels, n_test, seed))
        self.labels = self._all_labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_rows(self) -> int:
        """Rows in the whole split (before sub-sampling)."""
        return len(self._all_labels)

    def class_counts(self) -> np.ndarray:
        """Kept rows per class, ``(K,)``."""
        return np.bincount(self.labels, minlength=self.task.num_classes)

    def __iter__(self):
        return self.batches()

    def batches(self, batch_size: int = 128) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(pixel_values (B, 3, S, S) float32, labels (B,) int64)`` batches, in file order."""
        from PIL import Image

        pq = require("pyarrow.parquet")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images, labels = [], []
        pos = 0  # position in self.indices (sorted)
        open_file, pf = None, None
        for f, g, first, rows in self._groups:
            end = np.searchsorted(self.indices, first + rows, side="left")
            local = self.indices[pos:end] - first
            pos = end
            if len(local) == 0:
                continue
            if f != open_file:
                pf, open_file = pq.ParquetFile(f), f
            table = pf.read_row_group(g, columns=["image", "label"]).take(local)
            column = table.column("image").to_pylist()
            for j, (cell, label) in enumerate(zip(column, table.column("label").to_pylist())):
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                if data is None:
                    path = cell.get("path") if isinstance(cell, dict) else None
                    raise ValueError(f"{f}: row {first + int(local[j])} has no embedded image bytes "
                                     f"(path={path!r}); only embedded images are read")
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        images.append(preprocess(im, self.image_size))
                except Exception as e:
                    raise ValueError(f"{f}: row {first + int(local[j])}: cannot decode image "
                                     f"({type(e).__name__}: {e})") from None
                labels.append(int(label))
                if len(images) == batch_size:
                    yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)
                    images, labels = [], []
        if images:
            yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def load_test_set(task: "TaskSpec | str", source=None, *, n_test: int | None = None, seed: int = 0,
                  image_size: int = 224, timeout: float = 10.0, hub_cache_dir=None) -> TestSet:
    """The test split of ``task`` (from the hub, another hub id, or a local folder ``source``).

    ``n_test``: keep a seeded class-balanced subsample of that many rows (default: all).
    ``image_size``: preprocessing size (224 for the published CLIPs). ``timeout``: seconds to wait
    for the hub before failing (or falling back to the cache). ``hub_cache_dir``: the hub cache to
    use (default: huggingface_hub's).
    """
    files = test_files(task, source, timeout=timeout, hub_cache_dir=hub_cache_dir)
    return TestSet(task, files, n_test=n_test, seed=seed, image_size=image_size)
