"""The one method registry: library, CLI, notebooks and benchmarks all read :data:`METHODS`.

A :class:`Method` is a per-layer rule plus its typed parameters::

    @register("name", "one-line doc", params=[Param("scale", float, 1.0, "merged = base + scale * theta")],
              spectral=True)
    def my_rule(taus, *, name, scale):      # taus: (N, d_out, d_in) task vectors of one layer
        ...
        return delta, info                  # delta: (d_out, d_in) merged task vector; info: dict

Adding a method is one function and one ``@register`` line; it then appears in
``swudi-lab methods``, gets its ``--flags`` in ``swudi-lab merge`` (``rank_rule`` -> ``--rank-rule``),
and is reachable from :func:`swudi_lab.merge.merge`.

Routing of a checkpoint's tensors (the engine, :mod:`swudi_lab.merge.engine`):

- **baselines** (``spectral=False``: ``average``, ``task_arithmetic``, ``ties``) apply their own
  rule to every floating tensor, as those methods are defined;
- **the WUDI family** (``spectral=True``: ``wudi``, ``closed_form``, ``iwudi``, ``filtered``,
  ``swudi``, ``swudi_a``) apply their solver to 2-D weight matrices and the mean of task vectors
  to every other floating tensor (biases, norms, patch embeddings, positional embeddings, tokens);
- non-floating buffers come from the base; classification heads are kept per task, not merged.

Parameters are validated by :func:`resolve_params`: unknown names are a ``ValueError`` listing
the accepted ones, values are converted to the declared type, and parameters declared
mutually exclusive (``t`` / ``kappa``, ``k`` / ``ratio``) cannot both be given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["Param", "Method", "METHODS", "register", "get_method", "resolve_params", "describe_methods"]


@dataclass(frozen=True)
class Param:
    """A method parameter: name (also the CLI flag, ``_`` -> ``-``), type, default and help.

    ``type`` is ``float``, ``int``, ``str`` or ``bool`` (a bool is a switch, ``--reference``).
    ``choices`` restricts a value; ``check(value)`` may raise ``ValueError`` for other constraints.
    A default of ``None`` means "not set" (the method decides, e.g. ``kappa``).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    check: Callable[[Any], None] | None = field(default=None, compare=False, repr=False)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value, method: str):
        """Convert ``value`` to this parameter's type, or raise ``ValueError`` naming it."""
        if value is None:
            return None
        where = f"method {method!r}: parameter {self.name!r}"
        try:
            if self.type is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = value.lower() in ("true", "1", "yes")
                elif not isinstance(value, (bool, int)) or value not in (0, 1):
                    raise ValueError
                value = bool(value)
            elif self.type is int:
                if isinstance(value, bool) or not float(value).is_integer():
                    raise ValueError
                value = int(float(value))
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError
            elif self.type is str:
                if not isinstance(value, str):
                    raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be a finite {self.type.__name__}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        return value


@dataclass(frozen=True)
class Method:
    """A merge method: per-layer rule ``fn(taus, *, name, **params) -> (delta, info)`` and its parameters.

    ``spectral`` marks the WUDI family (solver on 2-D weights, mean of task vectors elsewhere);
    otherwise ``fn`` is applied to every floating tensor, ``taus`` then having shape (N, *shape).
    ``exclusive`` lists groups of parameters of which at most one may be given; ``check`` (if
    any) validates the resolved parameters as a whole and raises ``ValueError``.
    """

    name: str
    doc: str
    fn: Callable
    params: tuple[Param, ...]
    spectral: bool
    exclusive: tuple[tuple[str, ...], ...] = ()
    check: Callable[[dict], None] | None = field(default=None, compare=False, repr=False)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


METHODS: dict[str, Method] = {}
"""All merge methods by name, in registration order."""


def register(name: str, doc: str, *, params: Sequence[Param] = (), spectral: bool,
             exclusive: Sequence[Sequence[str]] = (), check: Callable[[dict], None] | None = None):
    """Decorator adding a per-layer rule to :data:`METHODS` under ``name``."""

    def deco(fn: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"method {name!r}: duplicate parameter names {names}")
        for group in exclusive:
            for g in group:
                if g not in names:
                    raise ValueError(f"method {name!r}: exclusive group names unknown parameter {g!r}")
        # one flag per name across methods: a name must mean the same type everywhere
        for other in METHODS.values():
            for p in other.params:
                if p.name in names and params[names.index(p.name)].type is not p.type:
                    raise ValueError(f"parameter {p.name!r} has type {p.type.__name__} in {other.name!r}")
        METHODS[name] = Method(name, doc, fn, tuple(params), spectral, tuple(tuple(g) for g in exclusive), check)
        return fn

    return deco


def get_method(name: str) -> Method:
    """The registered :class:`Method` ``name``; ``ValueError`` listing the known ones otherwise."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def resolve_params(method: str | Method, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``params`` for ``method`` and fill in the defaults.

    Raises ``ValueError`` for unknown parameter names (listing the accepted ones), values of the
    wrong type or out of their choices, and two given parameters of one exclusive group. When one
    member of an exclusive group is given, the others are set to ``None`` (``kappa=3`` disables
    the default ``t``).
    """
    m = get_method(method)
    params = dict(params or {})
    accepted = [p.name for p in m.params]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"method {m.name!r} got unknown parameter(s) {unknown}; accepted: {accepted or 'none'}"
        )
    given = {k for k, v in params.items() if v is not None}
    out = m.defaults
    for k, v in params.items():
        out[k] = m.param(k).convert(v, m.name)
    for group in m.exclusive:
        chosen = [g for g in group if g in given]
        if len(chosen) > 1:
            raise ValueError(f"method {m.name!r}: give only one of {list(group)}, got {chosen}")
        if chosen:
            for g in group:
                if g != chosen[0]:
                    out[g] = None
    if m.check is not None:
        try:
            m.check(out)
        except (TypeError, ValueError) as e:
            raise ValueError(f"method {m.name!r}: {e}") from None
    return out


def describe_methods(names: Sequence[str] | None = None) -> str:
    """Human-readable list of methods, their parameters and defaults (``swudi-lab methods``)."""
    lines = [
        "Routing: baselines (average, task_arithmetic, ties) apply their rule to every floating tensor;",
        "the WUDI family (wudi, closed_form, iwudi, filtered, swudi, swudi_a) solves 2-D weight matrices",
        "and takes the mean of task vectors for every other floating tensor. Non-floating buffers come",
        "from the base; classification heads (--head-pattern, default 'head\\..*') are kept per task.",
        "",
    ]
    for name in names or list(METHODS):
        m = get_method(name)
        kind = "WUDI family" if m.spectral else "baseline"
        lines.append(f"{m.name}  [{kind}]  {m.doc}")
        for p in m.params:
            default = "off" if (p.type is bool and not p.default) else ("unset" if p.default is None else p.default)
            choices = f" {{{', '.join(map(str, p.choices))}}}" if p.choices else ""
            lines.append(f"    {p.flag:<18} {p.type.__name__:<5} default {str(default):<22} {p.help}{choices}")
        for group in m.exclusive:
            lines.append(f"    (give at most one of {', '.join('--' + g.replace('_', '-') for g in group)})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
