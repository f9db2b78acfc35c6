"""Progress, decided in one place: a tqdm bar on a terminal, one line per phase (with its time) in a log."""

import io
import re

import pytest

from swudi_lab.progress import Phase, Progress, progress_mode


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_mode_follows_the_stream_and_the_flag():
    assert progress_mode(True, _Terminal()) == "bars"
    assert progress_mode(True, io.StringIO()) == "lines"  # a log, a pipe, CI
    assert progress_mode(False, _Terminal()) == "off"
    assert progress_mode("lines", _Terminal()) == "lines"
    with pytest.raises(ValueError, match="progress mode 'loud'"):
        progress_mode("loud")
    with pytest.raises(ValueError, match="expected one of bars, lines, off"):
        Progress("loud")


def test_log_mode_writes_one_line_per_phase_with_its_time(capsys):
    lines = []
    rep = Progress("lines", lines.append)
    with rep.phase("[seed 0] swudi", total=9) as ph:
        for _ in range(9):
            ph.update()
        ph.done("73.25% (merge 0.28 s)")
    with rep.phase("report"):
        pass
    assert len(lines) == 2
    assert re.fullmatch(r"\[seed 0\] swudi: 73\.25% \(merge 0\.28 s\) \(\d+\.\d s\)", lines[0]), lines[0]
    assert re.fullmatch(r"report \(\d+\.\d s\)", lines[1]), lines[1]
    out, err = capsys.readouterr()
    assert out == err == "", "lines go to the log only, never a bar"


def test_a_failed_phase_says_so_and_the_error_propagates():
    lines = []
    with pytest.raises(RuntimeError, match="boom"):
        with Progress("lines", lines.append).phase("merge"):
            raise RuntimeError("boom")
    assert len(lines) == 1 and lines[0].startswith("merge: failed after ") and "boom" in lines[0]


def test_bars_mode_draws_a_bar_and_logs_nothing(capsys):
    lines = []
    with Progress("bars", lines.append).phase("evaluate", total=3) as ph:
        ph.update(3)
        ph.done("72.9%")
    err = capsys.readouterr().err
    assert "evaluate" in err and "3/3" in err and "72.9%" in err
    assert lines == []


def test_off_mode_is_silent(capsys):
    lines = []
    ph = Phase("x", 2, mode="off", log=lines.append)
    ph.update()
    ph.done("done")
    ph.close()
    assert lines == [] and capsys.readouterr() == ("", "")
