"""``avatarforcing bench --soak``: a looped live session sampled per interval (plugin/app/soak.py).

The soak itself is a benchmark (docs/benchmarks.md); these tests check what it reports on a
few seconds: per-interval counts that add up to the session's, memory and load sampled, the
recording's audio/video offsets read back, and the goal figures computed from the samples."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile

from avatarforcing.plugin.app.cli import run_cli
from avatarforcing.plugin.app.soak import SoakInterval, SoakResult, summarise
from avatarforcing.plugin.host import build_plugin_host


def _sample(t_s: float, rss: float, held: int = 0, dropped: int = 0, offset: float | None = 5.0) -> SoakInterval:
    return SoakInterval(t_s, rss, 1.0, 750, held, dropped, 300.0, 340.0, 300.0 - (offset or 0), offset)


def test_goal_figures_count_from_the_first_minute():
    result = SoakResult(seconds=150, interval_s=30)
    result.intervals = [
        _sample(30, 400.0, held=9, dropped=3, offset=None),  # start-up: not counted
        _sample(60, 500.0, held=2),  # covers 30-60 s: not counted either
        _sample(90, 505.0, held=1, dropped=1, offset=-4.0),
        _sample(120, 510.0, dropped=2, offset=12.0),
    ]
    summarise(result)
    assert result.rss_growth_pct == pytest.approx(2.0)  # 500 -> 510 MiB
    assert (result.held_after_first_minute, result.dropped_after_first_minute) == (1, 3)
    assert (result.av_offset_start_ms, result.av_offset_end_ms) == (5.0, 12.0)


def test_a_short_soak_reports_intervals_that_add_up(tmp_path):
    voice = tmp_path / "voice.wav"
    t = np.arange(2 * 16000) / 16000
    soundfile.write(voice, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    report, record = tmp_path / "soak.json", tmp_path / "soak.mp4"
    out, err = io.StringIO(), io.StringIO()
    argv = ["bench", "--soak", "6", "--interval", "1.5", "--avatar-audio", str(voice), "--record", str(record)]
    status = run_cli([*argv, "--json", str(report)], build_plugin_host({}), out, err, environ={})
    assert status == 0, err.getvalue()[-3000:]
    result = json.loads(report.read_text())
    intervals = result["intervals"]
    assert len(intervals) >= 3  # 6 s sampled every 1.5 s (the last sample may fall after the end)
    assert all(s["rss_mib"] > 50 and s["load_1min"] >= 0 for s in intervals)
    assert [s["t_s"] for s in intervals] == sorted(s["t_s"] for s in intervals)
    session = result["session"]
    # every frame shown before the last sample is in exactly one interval
    assert 0 < sum(s["frames"] for s in intervals) <= session["frames"]
    assert sum(s["held"] for s in intervals) <= session["held"]
    assert any(s["latency_p50_ms"] for s in intervals) and result["error"] is None
    assert result["rss_growth_pct"] is None  # shorter than the first minute: no growth claimed
    # audio rides with the frames: the recording's streams start and end together (within a frame)
    assert abs(result["recording_av_start_ms"]) <= 40 and abs(result["recording_av_end_ms"]) <= 40
    assert "soak" in err.getvalue() and "rss" in err.getvalue()


def test_soak_refuses_bad_durations():
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["bench", "--soak", "0"], build_plugin_host({}), out, err, environ={})
    assert status == 2 and "--soak and --interval must be > 0 seconds" in err.getvalue()
