"""The one method registry: library, CLI, notebooks and benchmarks all read :data:`METHODS`.

A :class:`Method` is a per-layer rule whose parameters are declared once, in its signature
(:mod:`swudi_lab.registry`: the annotation is the type, a ``Doc`` the help and constraints)::

    @register("name", "one-line doc", spectral=True)
    def my_rule(taus, *, name="", scale: Annotated[float, Doc("merged = base + scale * theta")] = 1.0):
        ...                                 # taus: (N, d_out, d_in) task vectors of one layer
        return delta, info                  # delta: (d_out, d_in) merged task vector; info: dict

Adding a method is one function and one ``@register`` line; it then appears in
``swudi-lab methods``, gets its ``--flags`` in ``swudi-lab merge`` (``rank_rule`` -> ``--rank-rule``),
and is reachable from :func:`swudi_lab.merge.merge`.

Routing of a checkpoint's tensors (the engine, :mod:`swudi_lab.merge.engine`):

- **baselines** (``spectral=False``: ``average``, ``task_arithmetic``, ``ties``) apply their own
  rule to every floating tensor, as those methods are defined;
- **the WUDI family** (``spectral=True``: ``wudi``, ``closed_form``, ``iwudi``, ``filtered``,
  ``swudi``, ``swudi_a``, ``optmerge``) apply their solver to 2-D weight matrices and the mean of task vectors
  to every other floating tensor (biases, norms, patch embeddings, positional embeddings, tokens);
- non-floating buffers come from the base; classification heads are kept per task, not merged.

Parameters are validated by :func:`resolve_params`: unknown names are a ``ValueError`` listing
the accepted ones, values are converted to the declared type, and parameters declared
mutually exclusive (``t`` / ``kappa``, ``k`` / ``ratio``) cannot both be given. A preset
(:mod:`swudi_lab.config.presets`, ``preset="clip-vit-b32"``) supplies published values under the
caller's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..config.presets import PRESETS, Preset, get_preset
from ..registry import Param, params_of

__all__ = ["Param", "Method", "METHODS", "register", "get_method", "resolve_params", "describe_methods",
           "describe_presets"]


@dataclass(frozen=True)
class Method:
    """A merge method: per-layer rule ``fn(taus, *, name, **params) -> (delta, info)`` and its parameters.

    ``spectral`` marks the WUDI family (solver on 2-D weights, mean of task vectors elsewhere);
    otherwise ``fn`` is applied to every floating tensor, ``taus`` then having shape (N, *shape).
    ``declared`` are the parameters of ``fn``'s signature; ``extra_params`` (if any) returns more,
    read at call time (``filtered`` takes every registered filter's). ``exclusive`` lists groups
    of parameters of which at most one may be given; ``check`` (if any) validates the resolved
    parameters as a whole and raises ``ValueError``. ``prepass`` (if any) is
    ``prepass(params, layers) -> dict``: before the stream, the engine hands it the resolved parameters and
    a lazy iterable of ``(name, taus)`` over every merged 2-D layer; what it returns is added to the
    parameters of every call (SWUDI's ``alignment_rho`` needs every layer's ``lambda_max`` first). It
    should read the layers only when its parameters need them.
    """

    name: str
    doc: str
    fn: Callable
    declared: tuple[Param, ...]
    spectral: bool
    exclusive: tuple[tuple[str, ...], ...] = ()
    check: Callable[[dict], None] | None = field(default=None, compare=False, repr=False)
    extra_params: Callable[[], Sequence[Param]] | None = field(default=None, compare=False, repr=False)
    prepass: Callable[[dict, Any], dict] | None = field(default=None, compare=False, repr=False)

    @property
    def params(self) -> tuple[Param, ...]:
        if self.extra_params is None:
            return self.declared
        names = {p.name for p in self.declared}
        extra = [p for p in self.extra_params() if p.name not in names]
        return self.declared[:1] + tuple(extra) + self.declared[1:]

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: (None if p.required else p.default) for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


METHODS: dict[str, Method] = {}
"""All merge methods by name, in registration order."""


def register(name: str, doc: str, *, spectral: bool, exclusive: Sequence[Sequence[str]] = (),
             check: Callable[[dict], None] | None = None, extra_params: Callable[[], Sequence[Param]] | None = None,
             prepass: Callable[[dict, Any], dict] | None = None):
    """Decorator adding a per-layer rule to :data:`METHODS` under ``name``; parameters from its signature."""

    def deco(fn: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        params = params_of(fn)
        names = [p.name for p in params]
        groups = tuple(tuple(g) for g in exclusive)
        known = set(names) | ({p.name for p in extra_params()} if extra_params else set())
        for group in groups:
            for g in group:
                if g not in known:
                    raise ValueError(f"method {name!r}: exclusive group names unknown parameter {g!r}")
        # one flag per name across methods: a name must mean the same type everywhere
        for other in METHODS.values():
            for p in other.params:
                if p.name in names and params[names.index(p.name)].type is not p.type:
                    raise ValueError(f"parameter {p.name!r} has type {p.type.__name__} in {other.name!r}")
        METHODS[name] = Method(name, doc, fn, params, spectral, groups, check, extra_params, prepass)
        return fn

    return deco


def get_method(name: str) -> Method:
    """The registered :class:`Method` ``name``; ``ValueError`` listing the known ones otherwise."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def resolve_params(method: str | Method, params: dict[str, Any] | None = None, *,
                   preset: str | Preset | None = None) -> dict[str, Any]:
    """Validate ``params`` for ``method`` and fill in the defaults (under ``preset``'s values, if given).

    Raises ``ValueError`` for unknown parameter names (listing the accepted ones), values of the
    wrong type or out of their choices, and two given parameters of one exclusive group. When one
    member of an exclusive group is given, the others are set to ``None`` (``kappa=3`` disables
    the default ``t``). A preset's values count as given, below the caller's: ``params`` win, and
    a caller's ``kappa`` replaces the preset's ``t``. A preset without a setting for ``method``
    leaves it at its defaults.
    """
    m = get_method(method)
    params = dict(params or {})
    if preset is not None:
        p = get_preset(preset)
        published = p.params(m.name) if m.name in p.methods else {}
        for group in m.exclusive:
            if any(params.get(g) is not None for g in group):
                published = {k: v for k, v in published.items() if k not in group}
        params = {**published, **params}
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
    baselines = ", ".join(m.name for m in METHODS.values() if not m.spectral)
    family = ", ".join(m.name for m in METHODS.values() if m.spectral)
    lines = [
        f"Routing: baselines ({baselines}) apply their rule to every floating tensor;",
        f"the WUDI family ({family}) solves 2-D weight matrices",
        "and takes the mean of task vectors for every other floating tensor. Non-floating buffers come",
        "from the base; classification heads (--head-pattern, default 'head\\..*') are kept per task.",
        "Published settings: --preset NAME (see `swudi-lab presets`).",
        "",
    ]
    for name in names or list(METHODS):
        m = get_method(name)
        kind = "WUDI family" if m.spectral else "baseline"
        lines.append(f"{m.name}  [{kind}]  {m.doc}")
        for p in m.params:
            default = ("required" if p.required else "off" if (p.type is bool and not p.default)
                       else "unset" if p.default is None else p.default)
            choices = f" {{{', '.join(map(str, p.choices))}}}" if p.choices else ""
            lines.append(f"    {p.flag:<18} {p.type.__name__:<5} default {str(default):<22} {p.help}{choices}")
        for group in m.exclusive:
            lines.append(f"    (give at most one of {', '.join('--' + g.replace('_', '-') for g in group)})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def describe_presets() -> str:
    """Human-readable list of the presets and their settings (``swudi-lab presets``)."""
    lines = []
    for p in PRESETS.values():
        lines.append(f"{p.name}  {p.doc}" + (f"  [{p.source}]" if p.source else ""))
        for method, params in p.methods.items():
            args = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            lines.append(f"    {method:<16} {args}")
        if p.exclude:
            lines.append(f"    not merged (kept from the base): {', '.join(p.exclude)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
