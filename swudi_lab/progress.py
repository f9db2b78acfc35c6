"""Progress of long work, decided in one place: a tqdm bar on a terminal, one line per phase in a log.

The zoo's build, the demo's merges, evaluations and sweeps all report through :class:`Progress`:

* ``"bars"``  -- stderr is a terminal (or a Jupyter kernel runs the code): each phase is a tqdm bar
  (``tqdm.auto``: a widget in a notebook) that stays on screen when done, with its result and time;
* ``"lines"`` -- the output is a log (a file, a pipe, CI): no bars and no carriage returns, one line
  per finished phase, ``"<phase>: <result> (12.3 s)"``;
* ``"off"``   -- nothing.

:func:`progress_mode` turns the usual ``progress=True/False`` flag into a mode::

    rep = Progress(progress_mode(progress))
    with rep.phase("[seed 0] swudi", total=9) as ph:
        ...; ph.update()          # one step done
        ph.done("73.25%")         # the result, shown in the bar or the line
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

__all__ = ["MODES", "progress_mode", "Phase", "Progress"]

MODES = ("bars", "lines", "off")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_jupyter_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")


def progress_mode(progress: bool | str = True, stream=None) -> str:
    """``"bars"`` when ``progress`` and ``stream`` (default ``sys.stderr``) is a terminal or a Jupyter
    kernel runs the code, ``"lines"`` when ``progress`` and the output is a log, ``"off"`` when not
    ``progress``. A mode name passes through (``ValueError`` for any other string)."""
    if isinstance(progress, str):
        return _check_mode(progress)
    if not progress:
        return "off"
    stream = sys.stderr if stream is None else stream
    return "bars" if _is_terminal(stream) or _in_jupyter_kernel() else "lines"


def _print(msg: str) -> None:
    print(msg, flush=True)


class Phase:
    """One phase: a bar (``"bars"``), one line when it ends (``"lines"``), or nothing (``"off"``).

    ``update(n)`` advances the bar by ``n`` of ``total`` steps; ``done(note)`` sets the result shown
    at the end. ``seconds`` is the time since the phase began.
    """

    def __init__(self, desc: str, total: int | None = None, *, mode: str = "lines", log: Callable = _print,
                 unit: str = "step"):
        self.desc, self.total, self.mode, self.log, self.note = desc, total, _check_mode(mode), log, ""
        self._t0 = time.perf_counter()
        self._bar = None
        if mode == "bars":
            from tqdm.auto import tqdm

            fmt = {} if total else {"bar_format": "{desc}: {elapsed}{postfix}"}  # no count to show: time and result
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=True, file=sys.stderr, dynamic_ncols=True, **fmt)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def done(self, note: str) -> None:
        self.note = note
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=False)

    def line(self) -> str:
        """The phase's one line: ``"<desc>: <note> (<seconds> s)"``."""
        return f"{self.desc}: {self.note} ({self.seconds:.1f} s)" if self.note else f"{self.desc} ({self.seconds:.1f} s)"

    def close(self, failed: BaseException | None = None) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines":
            self.log(self.line() if failed is None else f"{self.desc}: failed after {self.seconds:.1f} s ({failed!r})")


@dataclass
class Progress:
    """A mode (see :func:`progress_mode`) and where its lines go (``log``, default ``print``)."""

    mode: str = "lines"
    log: Callable[[str], None] = field(default=_print)

    def __post_init__(self):
        _check_mode(self.mode)

    @contextmanager
    def phase(self, desc: str, total: int | None = None, unit: str = "step") -> Iterator[Phase]:
        """A :class:`Phase` for the ``with`` block; it is closed (bar finished, line logged) at the end."""
        ph = Phase(desc, total, mode=self.mode, log=self.log, unit=unit)
        try:
            yield ph
        except BaseException as e:
            ph.close(failed=e)
            raise
        ph.close()
