"""The one progress style (ewc_ref/progress.py): what is counted, the count, the time left; a redrawn
line on a terminal, whole lines (never a carriage return) in a log; nothing when disabled or --quiet.
"""

from __future__ import annotations

import io

import pytest

from ewc_ref import progress as progress_module
from ewc_ref.cli import main
from ewc_ref.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """A fake time.perf_counter: every call returns the current value; tests move it."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", fake)
    return fake


def test_a_log_gets_whole_lines_with_unit_count_and_time_left(clock):
    log = io.StringIO()
    meter = Progress(1000, "fisher exact/diag", stream=log, unit="rows")
    clock.now += 2.0
    meter.update(250)  # the first update is always shown in a log
    clock.now += 2.0
    meter.update(250)  # 4 s < LOG_INTERVAL after the first line: not shown
    clock.now += progress_module.LOG_INTERVAL
    meter.update(250)
    clock.now += 1.0
    meter.update(250)  # done: always shown
    meter.close()
    text = log.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        "fisher exact/diag: 250/1000 (25%) rows, 2.0 s elapsed, about 6.0 s left",
        "fisher exact/diag: 750/1000 (75%) rows, 14 s elapsed, about 4.7 s left",  # 14 x 250/750
        "fisher exact/diag: 1000/1000 (100%) rows, 15 s elapsed",
    ]


def test_a_terminal_gets_one_redrawn_line(clock):
    tty = Terminal()
    meter = Progress(4, "figures", stream=tty, unit="figures", interval=0.5)
    for _ in range(4):
        clock.now += 1.0
        meter.update()
    meter.close()
    text = tty.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 4
    assert text.rstrip("\n").split("\r")[-1].rstrip() == "figures: 4/4 (100%) figures, 4.0 s elapsed"
    assert "figures: 1/4 (25%) figures, 1.0 s elapsed, about 3.0 s left" in text


def test_a_log_gets_the_last_count_at_close_even_when_unfinished(clock):
    log = io.StringIO()
    meter = Progress(10, "demo", stream=log, unit="epochs")
    meter.update(3)
    clock.now += 1.0
    meter.update(2)
    meter.close()
    assert log.getvalue().splitlines()[-1].startswith("demo: 5/10 (50%) epochs")


def test_stages_end_a_drawn_line_first_and_disabled_prints_nothing(clock):
    tty = Terminal()
    meter = Progress(2, "diagnose", stream=tty)
    clock.now += 1.0
    meter.update()
    meter.stage("computing exact (diag)")
    assert tty.getvalue().endswith("\ndiagnose: computing exact (diag)\n")
    silent = io.StringIO()
    off = Progress(2, "x", enabled=False, stream=silent)
    off.update(2)
    off.stage("s")
    off.close()
    assert silent.getvalue() == "" and off.done == 2
    idle = io.StringIO()
    Progress(1, "diagnose", stream=idle).close()  # a stage-only reporter prints no counter at close
    assert idle.getvalue() == ""


@pytest.mark.parametrize(("seconds", "text"), [(0.04, "0.0 s"), (9.94, "9.9 s"), (12.4, "12 s"),
                                               (185, "3 min 05 s"), (3725, "1 h 02 min")])
def test_durations_are_short(seconds, text):
    assert progress_module._duration(seconds) == text


def test_the_cli_reports_progress_in_lines_and_quiet_silences_it(tmp_path, capsys):
    argv = ["figures", "--only", "trajectories", "--data-only", "-o", str(tmp_path)]
    assert main(argv) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err and err.startswith("figures: 1/1 (100%) figures, ")
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
