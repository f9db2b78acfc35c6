"""Pure spectral math of "merging as a noisy linear inverse problem" (docs/design.md).

- :mod:`~swudi_lab.spectral.filters`: filter factors ``f(lambda)`` (pseudoinverse, Landweber,
  exponential, Tikhonov, top-K, SWUDI, Wiener, products).
- :mod:`~swudi_lab.spectral.wudi`: a layer's task vectors -> ``C``, ``D``, the WUDI loss and gradient.
- :mod:`~swudi_lab.spectral.lowrank`: low-rank task vectors ``tau_i = s_i B_i A_i`` (LoRA) and their
  WUDI problem in the span of the ``A_i`` rows (:func:`lowrank_operator`).
- :mod:`~swudi_lab.spectral.estimator`: ``theta_f`` from ``(C, D, theta0, filter)``; the SVD form for ``A x = b``.
"""

from .estimator import (EIGEN_FLOOR, SVD, Eig, EigenbasisEstimate, check_normal_equation, eigenbasis_estimate, eigh,
                        filter_factors, filtered_solve, numerical_rank_tolerance, spectral_estimate, svd)
from .linalg import Eigenpairs, eigenpairs, gram, symmetric_eigh
from .filters import (
    FILTERS,
    Filter,
    FilterKind,
    register_filter,
    exponential,
    landweber,
    make_filter,
    pseudoinverse,
    swudi,
    tikhonov,
    top_k,
    wiener,
    zero,
)
from .wudi import (LayerOperator, as_task_stack, interference_operator, kappa_time, layer_operator,
                   subspace_operator, live_count, live_experts, loss_constant, quadratic_loss, sum_init,
                   task_norms, time_kappa, wudi_gradient, wudi_loss)
from .lowrank import LowRankOperator, LowRankTasks, lowrank_operator
from .iterative import (
    Trajectory,
    adam_wudi,
    empirical_filter_factors,
    fit_effective_time,
    gradient_descent,
    gradient_flow,
    wudi_reference,
)
from .rank_rules import RANK_RULES, choose_rank, cumvar, rank_context, rank_rule
from .choice import CHOICE_RULES, Choice, ChoiceRule, ParameterCurves, rules_for, choose, discrepancy, gcv, l_curve, oracle, parameter_curves
