"""One registry pattern for every kind of named thing: methods, filters, rank rules, choice rules.

A registered function declares each of its parameters **once**, in its signature: the annotation
gives the type, the default is the default, and a :class:`Doc` in ``typing.Annotated`` gives the
help text and the constraints::

    @FILTERS.register("tikhonov")
    def tikhonov(alpha: Annotated[float, Doc("ridge regularization", check=positive)]) -> Filter:
        ...

:func:`params_of` reads such a signature into :class:`Param` objects, which the library (to
validate calls), the CLI (one ``--flag`` per parameter), ``swudi-lab methods`` and the notebook
explorers all read. Parameters without a :class:`Doc` (a layer's task vectors ``taus``, the
eigenvalues ``lam``) are inputs, not parameters.

A :class:`Registry` maps names to entries in registration order and says, when a name is
unknown, which names it knows. Families of parametrized names (``cumvar_0.9``) resolve through
:meth:`Registry.add_family`.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["Doc", "Param", "REQUIRED", "params_of", "validate_call", "Registry",
           "positive", "nonnegative", "unit_interval", "at_least_one", "checked_number", "checked_count"]

REQUIRED = inspect.Parameter.empty
"""Default of a parameter that must be given."""


# ----------------------------------------------------------------------------- constraints


def positive(v) -> None:
    if v <= 0:
        raise ValueError(f"must be > 0, got {v!r}")


def nonnegative(v) -> None:
    if v < 0:
        raise ValueError(f"must be >= 0, got {v!r}")


def unit_interval(v) -> None:
    if not 0 < v <= 1:
        raise ValueError(f"must be in (0, 1], got {v!r}")


def at_least_one(v) -> None:
    if v < 1:
        raise ValueError(f"must be >= 1, got {v!r}")


def checked_number(name: str, value, allow_zero: bool = False) -> float:
    """``float(value)``, finite and > 0 (>= 0 with ``allow_zero``), else ``ValueError`` naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = (v >= 0) if allow_zero else (v > 0)
    if not math.isfinite(v) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def checked_count(name: str, value, minimum: int) -> int:
    """``int(value)`` for an integer ``>= minimum``, else ``ValueError`` naming ``name``."""
    try:
        ok = not isinstance(value, bool) and float(value).is_integer() and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Doc:
    """What ``Annotated[T, Doc(...)]`` adds to a parameter: help text, allowed values, a check.

    ``check(value)`` raises ``ValueError`` (its message completes "parameter X ...").
    """

    help: str
    choices: Sequence[Any] | None = None
    check: Callable[[Any], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Param:
    """A declared parameter: name (also the CLI flag, ``_`` -> ``-``), type, default and help.

    ``type`` is ``float``, ``int``, ``str`` or ``bool`` (a bool is a switch, ``--reference``).
    A default of ``None`` means "not set" (the function decides, e.g. ``kappa``);
    :data:`REQUIRED` means it must be given.
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

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def convert(self, value, owner: str):
        """Convert ``value`` to this parameter's type, or raise ``ValueError`` naming ``owner`` and it."""
        if value is None:
            return None
        where = f"{owner}: parameter {self.name!r}"
        try:
            value = _CONVERT[self.type](value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be a finite {self.type.__name__}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as e:
                raise ValueError(f"{where} {e}") from None
        return value


def _to_bool(v) -> bool:
    if isinstance(v, str):
        if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError
        return v.lower() in ("true", "1", "yes")
    if not isinstance(v, (bool, int)) or v not in (0, 1):
        raise ValueError
    return bool(v)


def _to_int(v) -> int:
    if isinstance(v, bool) or not float(v).is_integer():
        raise ValueError
    return int(float(v))


def _to_float(v) -> float:
    if isinstance(v, bool):
        raise ValueError
    v = float(v)
    if not math.isfinite(v):
        raise ValueError
    return v


def _to_str(v) -> str:
    if not isinstance(v, str):
        raise ValueError
    return v


_CONVERT = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _base_type(annotation, where: str) -> type:
    """``float`` from ``float``, ``float | None`` or ``Optional[float]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation not in _CONVERT:
        raise TypeError(f"{where}: parameter type must be one of float, int, str, bool, got {annotation!r}")
    return annotation


def params_of(fn: Callable) -> tuple[Param, ...]:
    """The :class:`Param` of every ``Annotated[T, Doc(...)]`` parameter of ``fn``, in signature order."""
    hints = typing.get_type_hints(fn, include_extras=True)
    out = []
    for p in inspect.signature(fn).parameters.values():
        hint = hints.get(p.name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        docs = [m for m in hint.__metadata__ if isinstance(m, Doc)]
        if not docs:
            continue
        d = docs[0]
        where = f"{getattr(fn, '__qualname__', fn)}({p.name})"
        out.append(Param(p.name, _base_type(hint.__origin__, where), p.default, d.help, d.choices, d.check))
    return tuple(out)


def validate_call(owner: str, params: Sequence[Param], given: dict) -> dict:
    """Check ``given`` against ``params``: unknown names, missing required ones, types and constraints.

    Returns the converted values of the given parameters (defaults are not filled in).
    """
    accepted = [p.name for p in params]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"{owner} got unknown parameter(s) {unknown}; accepted: {accepted or 'none'}")
    by_name = {p.name: p for p in params}
    missing = [p.name for p in params if p.required and given.get(p.name) is None]
    if missing:
        raise ValueError(f"{owner} needs parameter(s) {missing}")
    return {k: by_name[k].convert(v, owner) for k, v in given.items()}


# ----------------------------------------------------------------------------- registries


class Registry(dict):
    """Entries by name, in registration order; ``kind`` names them in messages ("filter", ...).

    ``registry[name]`` is a plain lookup; :meth:`lookup` also resolves families and raises a
    ``ValueError`` listing the known names.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.families: dict[str, Callable[[str], Any]] = {}

    def add(self, name: str, entry):
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def add_family(self, prefix: str, make: Callable[[str], Any]) -> None:
        """Names ``<prefix>_<suffix>`` resolve to ``make(suffix)`` (``cumvar_0.9``)."""
        self.families[prefix] = make

    def names(self) -> str:
        extra = "".join(f", any {p}_<value>" for p in self.families)
        return ", ".join(self) + extra

    def lookup(self, name):
        if isinstance(name, str):
            if name in self:
                return self[name]
            for prefix, make in self.families.items():
                if name.startswith(prefix + "_"):
                    return make(name[len(prefix) + 1:])
        raise ValueError(f"unknown {self.kind} {name!r}; known: {self.names()}")
