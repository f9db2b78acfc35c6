"""The toy demo: one noisy test problem, every filter, every parameter-choice rule.

``python -m swudi_lab.toy.demo`` (or ``make toy-demo``) prints a table like::

    filter         rule          parameter                          rel. error
    pseudoinverse  -             pseudoinverse()                    5.5e+04
    tikhonov       oracle        tikhonov(alpha=8.96e-05)           0.0616
    tikhonov       gcv           ...

The pseudoinverse ``f = 1`` amplifies the noise by ``1 / sigma_k``; every filter, at a good
parameter, is orders of magnitude better (docs/design.md, "the noisy inverse problem view").
"oracle" is the best parameter on the grid in hindsight (it knows ``x_true``); GCV, the
L-curve and the discrepancy principle (which knows ``||e||``) choose from the data alone.
Every registered filter with a sweep is a row group (:data:`~swudi_lab.spectral.FILTERS`); grids
are relative to ``sigma_1^2``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from ..spectral.choice import choose, rules_for
from ..spectral.estimator import filtered_solve, svd
from ..spectral.filters import FILTERS, pseudoinverse
from .noise import white_noise
from .problems import PROBLEMS, make_problem

__all__ = ["filter_families", "run_toy_demo", "format_table", "print_toy_demo", "main"]

def filter_families(sigma1: float, n: int) -> dict:
    """Every registered filter with a sweep, for a problem with largest singular value ``sigma1``.

    Returns ``{name: (family, params, rules)}``: ``family`` maps a parameter to a Filter and
    ``params`` is its grid, both from the filter's registry entry
    (:class:`~swudi_lab.spectral.filters.FilterKind` ``sweep``, grids relative to ``s = sigma1^2``);
    ``rules`` are the choice rules that apply to the grid (the L-curve needs a 1-D family; SWUDI's
    grid is 2-D ``(t, K)``).
    """
    s = sigma1**2
    out = {}
    for name, kind in FILTERS.items():
        if kind.sweep is not None:
            family, grid = kind.sweep(s, n)
            out[name] = (family, grid, rules_for(grid))
    return out


def run_toy_demo(problem: str = "shaw", n: int = 64, noise: float = 1e-3, seed: int = 0) -> list[dict]:
    """Solve ``A x = b_exact + e`` (``||e|| / ||b_exact|| ~ noise``) with every filter and rule.

    Returns rows ``{"filter", "rule", "parameter", "error"}`` where ``error`` is
    ``||x - x_true|| / ||x_true||`` and ``parameter`` the chosen filter's label. The first row
    is the pseudoinverse.
    """
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}; known: {', '.join(PROBLEMS)}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be finite and >= 0, got {noise!r}")
    p = make_problem(problem, n)
    data = white_noise(p.b_exact, noise, seed=seed)
    dec = svd(p.A)
    x_norm = float(p.x_true.norm())

    def err(x) -> float:
        return float((x - p.x_true).norm()) / x_norm

    x_pinv = filtered_solve(p.A, data.b, pseudoinverse(), decomposition=dec)
    rows = [{"filter": "pseudoinverse", "rule": "-", "parameter": pseudoinverse().label, "error": err(x_pinv)}]
    for name, (family, grid, rules) in filter_families(float(dec.sigma[0]), p.A.shape[1]).items():
        chosen = choose(p.A, data.b, family, grid, rules, x_true=p.x_true, noise_norm=data.noise_norm,
                        decomposition=dec)
        for rule, c in chosen.items():
            rows.append({"filter": name, "rule": rule, "parameter": c.filter.label, "error": err(c.x)})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`run_toy_demo` as a fixed-width text table."""
    head = f"{'filter':<14} {'rule':<12} {'parameter':<44} {'rel. error':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['filter']:<14} {r['rule']:<12} {r['parameter']:<44} {r['error']:>10.3g}")
    return "\n".join(lines)


def print_toy_demo(problem: str = "shaw", n: int = 64, noise: float = 1e-3, seed: int = 0) -> list[dict]:
    """Run :func:`run_toy_demo` and print its table with a one-line summary; returns the rows."""
    rows = run_toy_demo(problem, n, noise, seed)
    best = min(rows[1:], key=lambda r: r["error"])
    print(f"toy demo: {problem}(n={n}), relative noise {noise:g}, seed {seed}; "
          f"error ||x - x_true|| / ||x_true||")
    print(format_table(rows))
    print(f"best: {best['parameter']} ({best['rule']}), {rows[0]['error'] / best['error']:.3g}x "
          f"lower error than the pseudoinverse")
    return rows


def main(argv=None) -> None:
    """Command line: ``python -m swudi_lab.toy.demo [--problem shaw] [--n 64] [--noise 1e-3] [--seed 0]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="shaw", choices=sorted(PROBLEMS))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--noise", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print_toy_demo(args.problem, args.n, args.noise, args.seed)


if __name__ == "__main__":
    main()
