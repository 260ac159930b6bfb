"""The real-time session: a 25 fps clock, one thread per stage (capture -> features ->
generator -> renderer -> pacer -> sinks) with bounded queues, warm-up, speak/listen guidance,
recovery of failing sources and sinks, and stats. See docs/session.md.

    from avatarforcing.plugin.app.session import Session
    stats = Session(host, config, duration=60, stats_path="stats.json").run()
"""

from avatarforcing.plugin.app.session.clock import SessionClock
from avatarforcing.plugin.app.session.pacer import FramePacer, RenderedFrame
from avatarforcing.plugin.app.session.queues import END, StageQueue
from avatarforcing.plugin.app.session.runner import Session, renderer_name
from avatarforcing.plugin.app.session.stats import LatencyTracker, SessionStats
from avatarforcing.plugin.app.session.vad import SpeakListenPolicy, VoiceActivityDetector

__all__ = [
    "END",
    "FramePacer",
    "LatencyTracker",
    "RenderedFrame",
    "Session",
    "SessionClock",
    "SessionStats",
    "SpeakListenPolicy",
    "StageQueue",
    "VoiceActivityDetector",
    "renderer_name",
]
