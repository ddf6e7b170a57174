"""Progress in logs (no terminal): no burst of lines for fast work, a heartbeat for slow work."""

import logging
import time

from vid3d import ui


def test_fast_work_prints_no_burst_and_slow_work_a_heartbeat(monkeypatch, caplog):
    monkeypatch.setattr(ui, "LINE_EVERY", 0.2)
    monkeypatch.setattr(ui, "HEARTBEAT", 0.5)
    caplog.set_level(logging.INFO, logger="vid3d")
    with ui.progress("fast", 1000) as advance:
        for _ in range(1000):
            advance()
    fast = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fast")]
    assert len(fast) <= 3, fast  # the start, the end (10 lines before the change)
    assert fast[-1].startswith("fast 1000/1000")

    caplog.clear()
    with ui.progress("slow", 4) as advance:
        for _ in range(4):
            time.sleep(0.6)  # one step longer than the heartbeat
            advance(loss=0.5)
        time.sleep(1.1)
    slow = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow")]
    assert len(slow) >= 5, slow
    assert any("/s" in line and "s left" in line for line in slow), slow
