"""The wire protocol, the embedded stream's saved state, a served session, and the ``remote``
engine against a real WebSocket server (without Ray: tests/test_serving.py runs the Ray one).

The server here is `websockets`' own, hosting `ServedSession`s exactly as a replica does, so
the client's reconnect, resume and local fallback run against real sockets that really close.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from avatarforcing.plugin.api.errors import ConfigError, PluginError
from avatarforcing.plugin.api.types import InputTick, MotionBlock, SessionInfo
from avatarforcing.plugin.app.config import config_from_dict
from avatarforcing.plugin.app.serving import protocol
from avatarforcing.plugin.app.serving.bench import file_ticks, local_run
from avatarforcing.plugin.app.serving.protocol import (
    Blocks,
    Checkpoint,
    Ended,
    Finish,
    Hello,
    ProtocolError,
    Ready,
    Tick,
    decode,
    encode,
)
from avatarforcing.plugin.app.serving.session import EngineSource, ServedSession
from avatarforcing.plugin.builtins.engines.embedded import DefaultEngine
from avatarforcing.plugin.builtins.engines.remote import RemoteEngine
from avatarforcing.schemas.media_rates import SAMPLES_PER_FRAME

SECONDS = 2.0  # 50 frames: the first clip and 6 blocks, with two checkpoints between
NO_TRACKING = (("engines.default.face_tracking", False),)


@pytest.fixture(scope="module")
def sample_ticks(samples_dir) -> list[InputTick]:
    return file_ticks(str(samples_dir / "avatar.wav"), str(samples_dir / "user.mp4"), int(SECONDS * 25))


def _info(seed: int) -> SessionInfo:
    return SessionInfo("test", config_from_dict({"model": {"seed": seed}}))


_LOCAL_RUNS: dict[tuple[int, int], np.ndarray] = {}


def _local_run(ticks, seed: int) -> np.ndarray:
    """Latents of the default engine run here on `ticks` (computed once per seed and length)."""
    key = (seed, len(ticks))
    if key not in _LOCAL_RUNS:
        _LOCAL_RUNS[key] = local_run(ticks, seed)
    return _LOCAL_RUNS[key]


# --------------------------------------------------------------------------------------------
# protocol
# --------------------------------------------------------------------------------------------
def test_messages_round_trip():
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1, 1, (2, 2 * SAMPLES_PER_FRAME)).astype(np.float32)
    tick = Tick(5, 2, audio[0], audio[1], 0.5, 1.25, jpegs=[], params=[None, np.arange(13, dtype=np.float32)])
    back = decode(encode(dataclass_copy(tick, audio_format="f32")))
    assert isinstance(back, Tick) and back.first_frame == 5 and back.num_frames == 2
    assert np.array_equal(back.avatar_audio, audio[0]) and np.array_equal(back.user_audio, audio[1])
    assert back.params[0] is None and np.array_equal(back.params[1], np.arange(13))
    # s16: the 16-bit PCM of the issue, one quantisation step of error at most
    s16 = decode(encode(dataclass_copy(tick, audio_format="s16")))
    assert np.abs(s16.avatar_audio - audio[0]).max() <= 1.0 / 32767 + 1e-7
    latents = rng.normal(size=(4, 13)).astype(np.float32)
    blocks = decode(encode(Blocks([(3, 29, latents, {"compute_ms": 1.5})], input_frame=33, server_ms=2.0)))
    assert blocks.blocks[0][:2] == (3, 29) and np.array_equal(blocks.blocks[0][2], latents)
    hello = decode(encode(Hello(token="t0k", seed=7, session_id="abc", state=b"\x00\x01", next_frame=25)))
    assert (hello.token, hello.seed, hello.state, hello.next_frame) == ("t0k", 7, b"\x00\x01", 25)
    assert "t0k" not in repr(hello)  # a token never reaches a log through a repr
    ready = decode(encode(Ready(session_id="abc", engine="default", warm_up=latents)))
    assert ready.engine == "default" and np.array_equal(ready.warm_up, latents)
    assert isinstance(decode(encode(Finish())), Finish) and isinstance(decode(encode(Ended())), Ended)


def dataclass_copy(message, **changes):
    import dataclasses

    return dataclasses.replace(message, **changes)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter than"),
        (b"XX\x01\x00\x00\x00\x00", "bad magic"),
        (b"AF\x09\x02\x00\x00\x00{}", "version 9"),
        (b"AF\x01\x05\x00\x00\x00{]xx]", "not UTF-8 JSON"),
        (b"AF\x01\x02\x00\x00\x00[]", "JSON object"),
        (b'AF\x01\x0f\x00\x00\x00{"type":"nope"}', "unknown message type"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(data, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(data)


def test_tick_validation_names_the_problem():
    good = encode(Tick(0, 1, np.zeros(640, np.float32), np.zeros(640, np.float32), audio_format="f32"))
    header_len = int.from_bytes(good[3:7], "little")
    header = good[7 : 7 + header_len]
    short = good[: 7 + header_len] + good[7 + header_len : -4]  # one sample missing
    with pytest.raises(ProtocolError, match="parts describe"):
        decode(short)
    too_many = header.replace(b'"num_frames":1', b'"num_frames":99')
    with pytest.raises(ProtocolError, match="at most 25"):
        decode(good[:3] + len(too_many).to_bytes(4, "little") + too_many + good[7 + header_len :])
    nan = np.full(640, np.nan, np.float32)
    with pytest.raises(ProtocolError, match="not finite"):
        decode(encode(Tick(0, 1, nan, nan, audio_format="f32")))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(good, max_bytes=100)
    assert protocol.VERSION == 1


# --------------------------------------------------------------------------------------------
# saved state of the embedded stream
# --------------------------------------------------------------------------------------------
def test_saved_state_resumes_exactly(sample_ticks):
    ticks = sample_ticks
    expected = _local_run(ticks, seed=4)
    first = DefaultEngine(face_tracking=False)
    first.open(_info(4))
    first.warm_up()
    cut = 31  # mid-block, with samples pending in the log-mel front ends
    blocks = [b for t in ticks[:cut] for b in first.generate(first.extract(t))]
    blob = first.save_state()
    first.close()
    assert 10_000 < len(blob) < 2_000_000
    second = DefaultEngine(face_tracking=False)
    second.open(_info(4))
    second.load_state(blob)
    blocks += [b for t in ticks[cut:] for b in second.generate(second.extract(t))] + second.finish()
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert np.array_equal(np.concatenate([b.latents for b in blocks]), expected)
    with pytest.raises(ValueError, match="not a saved default-avatar stream"):
        second.load_state(b"garbage")


# --------------------------------------------------------------------------------------------
# a served session, without a network
# --------------------------------------------------------------------------------------------
def test_served_session_matches_a_local_run_and_checkpoints(sample_ticks):
    ticks = sample_ticks
    session = ServedSession(EngineSource(overrides=NO_TRACKING), Hello(seed=4, checkpoint_frames=25))
    ready = session.open()
    assert ready.engine == "default" and ready.warm_up.shape[1] == 13 and not ready.resumed
    latents, checkpoints = [], []
    for t in ticks:
        wire = decode(encode(Tick(t.first_frame, 1, t.avatar_audio, t.user_audio, audio_format="f32")))
        for reply in session.tick(wire):
            if isinstance(reply, Checkpoint):
                checkpoints.append(reply)
            else:
                latents += [b[2] for b in reply.blocks]
    latents += [b[2] for b in session.finish()[0].blocks]
    session.close()
    assert np.array_equal(np.concatenate(latents), _local_run(ticks, seed=4))
    assert [c.next_frame for c in checkpoints] == [25 * (i + 1) for i in range(len(checkpoints))] and checkpoints
    with pytest.raises(ProtocolError, match="must be >= 0|model.seed"):
        ServedSession(EngineSource(), Hello(seed=-1))


# --------------------------------------------------------------------------------------------
# the remote engine against a real WebSocket server
# --------------------------------------------------------------------------------------------
class SessionServer:
    """A WebSocket server hosting `ServedSession`s like a replica; `drop()` closes every
    connection abruptly (a dead replica), `refuse` makes it refuse new ones."""

    def __init__(self, token: str = "") -> None:
        from websockets.sync.server import serve

        self.token, self.refuse, self.connections = token, False, []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = serve(self._handle, "127.0.0.1", self.port, compression=None, max_size=None)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/avatar"

    def _handle(self, ws) -> None:
        if self.refuse:
            ws.close(1013, "server full: test")
            return
        self.connections.append(ws)
        session = None
        try:
            hello = decode(ws.recv())
            if self.token and hello.token != self.token:
                ws.close(1008, "bad token")
                return
            session = ServedSession(EngineSource(overrides=NO_TRACKING), hello, replica="test")
            ws.send(encode(session.open()))
            for data in ws:
                message = decode(data)
                replies = session.finish() if isinstance(message, Finish) else session.tick(message)
                for reply in replies:
                    ws.send(encode(reply))
        except Exception:  # the connection was dropped by the test
            pass
        finally:
            if session is not None:
                session.close()

    def drop(self) -> None:
        for ws in self.connections:
            ws.socket.close()
        self.connections.clear()

    def close(self) -> None:
        self.server.shutdown()


def _remote_run(engine: RemoteEngine, ticks, on_tick=None) -> tuple[list, list[float]]:
    """Drive `engine` at twice real time; returns the blocks and when each arrived (those of
    `finish()` at its return)."""
    blocks, arrivals = [], []
    for t in ticks:
        if on_tick is not None:
            on_tick(t.first_frame)
        got = engine.generate(engine.extract(t))
        blocks += got
        arrivals += [time.monotonic()] * len(got)
        time.sleep(0.02)
    last = engine.finish()  # after a slow reconnect all the rest may come here
    blocks += last
    arrivals += [time.monotonic()] * len(last)
    return blocks, arrivals


def test_remote_engine_equals_a_local_run_and_resumes_after_a_drop(sample_ticks):
    ticks = sample_ticks
    server = SessionServer()
    try:
        engine = RemoteEngine(url=server.url, video="none", audio="f32", checkpoint_s=0.4)  # every 10 frames
        engine.open(_info(4))
        assert engine.warm_up() and engine.ready.engine == "default"
        dropped = {}

        def drop_at(frame):
            if frame == 32:
                dropped["at"] = time.monotonic()
                server.drop()

        blocks, arrivals = _remote_run(engine, ticks, drop_at)
        stats = engine.network_stats()
        engine.close()
    finally:
        server.close()
    assert [b.index for b in blocks] == list(range(len(blocks)))  # none lost, none twice
    assert np.array_equal(np.concatenate([b.latents for b in blocks]), _local_run(ticks, seed=4))
    assert stats["reconnects"] == 1 and stats["round_trip"]["count"] > 0 and stats["received_bytes_per_s"] > 0
    after = [t for t in arrivals if t > dropped["at"]]
    assert after and after[0] - dropped["at"] < 2.0  # the session went on within 2 s


@pytest.mark.parametrize("frame_format", ["rgba", "jpeg"])
def test_frames_rendered_on_the_server(sample_ticks, frame_format):
    from avatarforcing.plugin.builtins.engines.remote import RemoteFrames
    from avatarforcing.plugin.host import build_plugin_host

    ticks = sample_ticks[:33]  # the first clip and two blocks
    server = SessionServer()
    try:
        engine = RemoteEngine(url=server.url, video="none", audio="f32", render="puppet", frame_format=frame_format)
        info = _info(4)
        info.renderer = "remote-frames"
        engine.open(info)
        warm = engine.warm_up()
        blocks, _ = _remote_run(engine, ticks)
        engine.close()
    finally:
        server.close()
    frames = [f for b in blocks for f in RemoteFrames().render(b)]
    assert [f.index for f in frames] == list(range(len(frames))) and len(frames) == 33
    channels = 4 if frame_format == "rgba" else 3
    assert warm[0].latents.shape[1:] == frames[0].image.shape and frames[0].image.shape[2] == channels
    # the same motion through the same renderer here: PNG is lossless, JPEG close
    puppet = build_plugin_host().create("renderers", "puppet", {}, "render")
    puppet.open(info)
    latents = _local_run(sample_ticks, seed=4)[:33]
    local = [f.image for f in puppet.render(MotionBlock(0, 0, 33, latents))]
    if frame_format == "rgba":
        assert all(np.array_equal(a.image, b) for a, b in zip(frames, local))
    else:
        from avatarforcing.integrations.alpha import flatten_rgba

        error = np.mean([np.abs(a.image.astype(int) - flatten_rgba(b)).mean() for a, b in zip(frames, local)])
        assert error < 3.0, error


def test_remote_frames_renderer_and_server_rendering_go_together():
    info = _info(1)
    info.renderer = "puppet"
    with pytest.raises(ConfigError, match="render.use=remote-frames"):
        RemoteEngine(render="puppet").open(info)
    info.renderer = "remote-frames"
    with pytest.raises(ConfigError, match="set engines.remote.render"):
        RemoteEngine().open(info)


def test_remote_engine_falls_back_to_the_local_engine(sample_ticks):
    ticks = sample_ticks
    server = SessionServer()
    engine = RemoteEngine(url=server.url, video="none", audio="f32", fallback=True, fallback_after_s=0.2)
    engine.open(_info(4))

    def kill_at(frame):
        if frame == 32:
            server.refuse = True
            server.drop()

    try:
        blocks, _ = _remote_run(engine, ticks, kill_at)
        stats = engine.network_stats()
        engine.close()
    finally:
        server.close()
    assert stats["fallback"] and any(b.metadata.get("fallback") for b in blocks)
    assert [b.index for b in blocks] == list(range(len(blocks)))
    # resumed from the server's checkpoint: the same motion as if nothing had happened
    assert np.array_equal(np.concatenate([b.latents for b in blocks]), _local_run(ticks, seed=4))


def test_serve_command_refuses_bad_options_before_ray_starts(tmp_path):
    import io

    from avatarforcing.plugin.app.cli import run_cli
    from avatarforcing.plugin.host import build_plugin_host

    def serve(*args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = run_cli(["serve", *args], build_plugin_host(), out, err)
        return code, err.getvalue()

    code, err = serve("--host", "0.0.0.0")
    assert code == 2 and "needs a token file" in err and "Traceback" not in err
    code, err = serve("--token-file", str(tmp_path / "absent"))
    assert code == 2 and "token file not found" in err
    code, err = serve("--engine", "no-such-engine")
    assert code != 0 and "no-such-engine" in err
    (tmp_path / "token").write_text("secret-value\n")
    code, err = serve("--token-file", str(tmp_path / "token"), "--tls-cert", str(tmp_path / "cert.pem"))
    assert code == 2 and "--tls-cert: file not found" in err and "secret-value" not in err


def test_unreachable_server_and_bad_token_are_one_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = RemoteEngine(url=f"ws://127.0.0.1:{port}/avatar", video="none", connect_timeout_s=2.0)
    with pytest.raises(PluginError, match=r"cannot reach .*avatarforcing serve"):
        engine.open(_info(1))
    server = SessionServer(token="right")
    try:
        (tmp_path / "token").write_text("wrong\n")
        engine = RemoteEngine(url=server.url, video="none", token_file=str(tmp_path / "token"))
        with pytest.raises(PluginError, match="refused the session: bad token"):
            engine.open(_info(1))
        engine = RemoteEngine(url=server.url, video="none", token_file=str(tmp_path / "missing"))
        with pytest.raises(ConfigError, match="token file not found"):
            engine.open(_info(1))
        server.refuse = True
        with pytest.raises(PluginError, match="is full"):
            RemoteEngine(url=server.url, video="none").open(_info(1))
    finally:
        server.close()
