"""Progress output where stderr is not a terminal: timed plain lines with count, rate and ETA."""

from __future__ import annotations

import time

from diffaudit.core import progress


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_log_lines_print_at_the_interval_with_rate_and_eta(capsys):
    clock = _Clock()
    bar = progress._LogLines("sample", 1000, unit="img", completed=200, interval=60, clock=clock)
    clock.t += 30
    bar.advance(100)
    assert capsys.readouterr().err == ""  # within the interval: silent
    clock.t += 30
    bar.advance(100, loss=0.031234)
    err = capsys.readouterr().err.strip()
    # 200 done in this run over 60 s (the 200 already done when resumed do not count towards the rate)
    assert err == "sample: 400/1,000 (40%), 3.33 img/s, 1m00s elapsed, ETA 3m00s, loss=0.03123"
    clock.t += 10
    bar.advance(600)
    bar.close()  # the final count, once lines were printed
    assert capsys.readouterr().err.startswith("sample: 1,000/1,000 (100%), 11.4 img/s, 1m10s elapsed, ETA 0s")


def test_work_shorter_than_an_interval_prints_nothing(capsys):
    clock = _Clock()
    bar = progress._LogLines("sample", 10, unit="img", completed=0, interval=60, clock=clock)
    clock.t += 5
    bar.advance(10)
    bar.close()
    assert capsys.readouterr().err == ""


def test_progress_bar_is_plain_lines_off_a_terminal_and_silent_when_quiet(monkeypatch, capsys):
    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    monkeypatch.delenv("DIFFAUDIT_PROGRESS", raising=False)
    monkeypatch.setenv("DIFFAUDIT_PROGRESS_INTERVAL", "1e-9")
    with progress.progress_bar("train", 3, unit="step") as bar:
        assert isinstance(bar, progress._LogLines)
        for _ in range(3):
            time.sleep(0.001)
            bar.advance(1)
    assert "train: 3/3 (100%)" in capsys.readouterr().err
    monkeypatch.setenv("DIFFAUDIT_PROGRESS_INTERVAL", "0")
    with progress.progress_bar("train", 3) as bar:
        bar.advance(3)
    monkeypatch.setenv("DIFFAUDIT_QUIET", "1")
    monkeypatch.setenv("DIFFAUDIT_PROGRESS_INTERVAL", "1e-9")
    with progress.progress_bar("train", 3) as bar:
        bar.advance(3)
    assert capsys.readouterr().err == ""


def test_durations():
    assert [progress._duration(s) for s in (7.2, 65, 3725)] == ["7s", "1m05s", "1h02m05s"]
