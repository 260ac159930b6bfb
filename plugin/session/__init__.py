"""The real-time session: a 25 fps clock, one thread per stage (capture -> features ->
generator -> renderer -> pacer -> sinks) with bounded queues, warm-up, speak/listen guidance,
recovery of failing sources and sinks, and stats. See docs/session.md.

    from avatarforcing.plugin.session import LiveSession
    stats = LiveSession(host, config, duration=60, stats_path="stats.json").run()
"""

from avatarforcing.plugin.session.clock import SessionClock
from avatarforcing.plugin.session.pacer import FramePacer, RenderedFrame
from avatarforcing.plugin.session.queues import END, StageQueue
from avatarforcing.plugin.session.runner import LiveSession, renderer_name
from avatarforcing.plugin.session.stats import LatencyTracker, SessionStats
from avatarforcing.plugin.session.vad import SpeakListenPolicy, VoiceActivityDetector

__all__ = [
    "END",
    "FramePacer",
    "LatencyTracker",
    "LiveSession",
    "RenderedFrame",
    "SessionClock",
    "SessionStats",
    "SpeakListenPolicy",
    "StageQueue",
    "VoiceActivityDetector",
    "renderer_name",
]
