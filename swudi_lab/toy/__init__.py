"""The toy lab: small inverse problems that show why a filter beats the pseudoinverse.

- :mod:`~swudi_lab.toy.operators`: synthetic ``A = U diag(sigma) V^T`` with a prescribed spectrum
  (polynomial, exponential, cliff) and merge-like operators from random low-rank task vectors.
- :mod:`~swudi_lab.toy.problems`: classic test problems with exact solutions (Hansen's
  Regularization Tools): ``shaw``, ``deriv2``, ``phillips``, ``gravity``.
- :mod:`~swudi_lab.toy.noise`: white noise, eigen-dependent noise, merge proxy noise.
- :mod:`~swudi_lab.toy.picard`: Picard-plot data ``(sigma_k, |u_k^T b|, |u_k^T b| / sigma_k)``.
- :mod:`~swudi_lab.toy.demo`: every filter and parameter-choice rule on one noisy problem.
"""

from .noise import MergeProxy, NoisyData, eigen_noise, merge_proxy, noise_variances, random_merge_proxy, white_noise
from .operators import (
    SPECTRA,
    MergeOperator,
    SyntheticOperator,
    cliff_spectrum,
    exponential_spectrum,
    merge_like_operator,
    operator_from_spectrum,
    polynomial_spectrum,
    random_orthogonal,
    synthetic_operator,
)
from .picard import Picard, picard
from .problems import PROBLEMS, Problem, deriv2, gravity, make_problem, phillips, shaw


def __getattr__(name):  # the demo loads lazily, so `python -m swudi_lab.toy.demo` runs cleanly
    if name in ("run_toy_demo", "print_toy_demo", "format_table"):
        from . import demo

        return getattr(demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
