"""How a scene job's progress reaches the database: at most once a second, always the end."""

from __future__ import annotations

from anyband import scene_runner
from anyband.scene_runner import at_most_every


def test_progress_is_reported_at_most_every_interval_and_always_at_the_end(monkeypatch):
    clock = iter([0.0, 0.2, 0.4, 1.1, 1.3, 2.0, 2.15, 2.2])
    monkeypatch.setattr(scene_runner.time, "monotonic", lambda: next(clock))
    reported = []
    progress = at_most_every(1.0, lambda done, total: reported.append(done))
    for done in range(1, 9):
        progress(done, 8)
    # At 0.0 (the first), 1.1 and 2.15 (a second after the last report), 2.2 (the end).
    assert reported == [1, 4, 7, 8]


def test_the_last_window_is_reported_even_right_after_another_report(monkeypatch):
    monkeypatch.setattr(scene_runner.time, "monotonic", lambda: 5.0)
    reported = []
    progress = at_most_every(1.0, lambda done, total: reported.append((done, total)))
    for done in (10, 20, 30):
        progress(done, 30)
    assert reported == [(10, 30), (30, 30)]
