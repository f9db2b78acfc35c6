"""Per-layer merge report: one row per tensor, a text table, JSON and CSV.

Row fields (absent ones are empty): ``name``, ``shape``, ``route`` (``solver``: the method's
per-layer solver on a 2-D weight; ``rule``: a baseline's rule; ``mean``: mean of task vectors;
``base``: copied from the base (non-floating or excluded); ``head``: kept per task), ``n_live``
(experts with a nonzero task vector), eigenvalue summary of C (``lam_max``, ``lam_min``,
``lam_mean`` = N_live / d_in, ``participation`` = (sum lambda)^2 / sum lambda^2), ``filter``,
``k`` (kept directions), ``t`` and ``kappa`` (= t N_live / d_in), ``lr``, proxy loss
``loss_before`` (at theta0) and ``loss_after``, and ``seconds``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write_text

__all__ = ["MergeReport", "COLUMNS"]

COLUMNS = [
    "name", "shape", "route", "n_live", "lam_max", "lam_min", "lam_mean", "participation",
    "filter", "k", "t", "kappa", "lr", "loss_before", "loss_after", "seconds",
]
_TABLE_COLUMNS = ["name", "shape", "lam_max", "lam_min", "k", "filter", "t", "kappa", "lr",
                  "loss_before", "loss_after", "seconds"]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return "x".join(str(s) for s in v)
    return str(v)


@dataclass
class MergeReport:
    """What a merge did, layer by layer. ``rows`` is a list of dicts (see module docstring)."""

    method: str
    params: dict
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # device, dtype, n_experts, tasks, seconds, output

    def add(self, **row) -> None:
        self.rows.append(row)

    @property
    def solver_rows(self) -> list[dict]:
        """Rows of tensors merged by the method's own rule (``route`` solver or rule)."""
        return [r for r in self.rows if r.get("route") in ("solver", "rule")]

    @property
    def seconds(self) -> float:
        return float(sum(r.get("seconds") or 0.0 for r in self.rows))

    def counts(self) -> dict[str, int]:
        """Number of tensors per route."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["route"]] = out.get(r["route"], 0) + 1
        return out

    def to_table(self, all_rows: bool = False) -> str:
        """Fixed-width text table of the solver rows (all rows with ``all_rows=True``) and a summary."""
        rows = self.rows if all_rows else [r for r in self.rows if r.get("route") == "solver"] or self.solver_rows
        cols = [c for c in (["route"] if all_rows else []) + _TABLE_COLUMNS if any(r.get(c) is not None for r in rows)]
        if "name" not in cols:
            cols.insert(0, "name")
        cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        counts = ", ".join(f"{n} {route}" for route, n in sorted(self.counts().items()))
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items() if v is not None)
        lines.append(f"method {self.method}({params}): {len(self.rows)} tensors ({counts}), {self.seconds:.2f} s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()

    def to_dict(self) -> dict:
        return {"method": self.method, "params": self.params, "meta": self.meta, "rows": self.rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def to_csv(self) -> str:
        buf = io.StringIO()
        extra = sorted({k for r in self.rows for k in r} - set(COLUMNS))
        w = csv.DictWriter(buf, fieldnames=COLUMNS + extra, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(v) if k == "shape" else ("" if v is None else v) for k, v in r.items()})
        return buf.getvalue()

    def write(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write JSON and CSV atomically: ``report.json`` also writes ``report.csv`` (and vice versa).

        Returns ``(json_path, csv_path)``.
        """
        path = Path(path)
        if path.suffix.lower() == ".csv":
            csv_path, json_path = path, path.with_suffix(".json")
        else:
            json_path, csv_path = path, path.with_suffix(".csv")
        atomic_write_text(json_path, self.to_json())
        atomic_write_text(csv_path, self.to_csv())
        return json_path, csv_path
