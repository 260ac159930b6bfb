"""``avatarforcing serve`` on a real local Ray (CPU): concurrent remote sessions of the default
engine from the sample files, isolation, a replica killed mid-session, bad tokens, malformed
messages and a full server.

One Ray instance for the module (2 CPUs, no dashboard), two replicas of two sessions each,
shut down at the end (`serve.shutdown()`, `ray.shutdown()`).
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the serve extra (ray[serve]) is not installed")

from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.types import InputTick, SessionInfo
from avatarforcing.plugin.app.config import config_from_dict
from avatarforcing.plugin.app.serving import app as serving
from avatarforcing.plugin.app.serving.bench import file_ticks, local_run
from avatarforcing.plugin.app.serving.protocol import Hello, Ready, Tick, decode, encode
from avatarforcing.plugin.app.serving.session import EngineSource
from avatarforcing.plugin.builtins.engines.remote import RemoteEngine

TOKEN = "correct horse battery staple"
SESSIONS_PER_REPLICA = 2
REPLICAS = 2
# the server's engine: the default avatar at nfe 3 (one network evaluation a block), so that three
# live sessions, their server and Ray share 2 CPU cores
NFE = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A running application; yields ``(url, token file)``."""
    settings = serving.ServeSettings(
        source=EngineSource(overrides=(("engines.default.nfe", NFE),)),
        port=_free_port(),
        token_sha256=serving.token_digest(TOKEN),
        sessions_per_replica=SESSIONS_PER_REPLICA,
        min_replicas=REPLICAS,
        max_replicas=REPLICAS,
        cpus_per_replica=0.5,
        threads=1,
    )
    token_file = tmp_path_factory.mktemp("serve") / "token"
    token_file.write_text(TOKEN + "\n")
    serving.start(settings, num_cpus=2)
    try:
        yield settings.url, str(token_file)
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def sample_ticks(samples_dir) -> list[InputTick]:
    return file_ticks(str(samples_dir / "avatar.wav"), str(samples_dir / "user.mp4"), 50)


def _info(seed: int) -> SessionInfo:
    return SessionInfo(f"seed-{seed}", config_from_dict({"model": {"seed": seed}}))


def _local(ticks, seed: int) -> np.ndarray:
    # the server's default engine tracks faces; these ticks have none, so tracking changes nothing
    return local_run(ticks, seed, nfe=NFE)


def _remote(url, token_file, ticks, seed, pace_s=0.0, on_frame=None):
    """Blocks of a remote session of `ticks`, when each arrived, and the engine (closed)."""
    engine = RemoteEngine(url=url, token_file=token_file, video="none", audio="f32", checkpoint_s=0.4)
    engine.open(_info(seed))
    blocks, arrivals = [], []
    try:
        for tick in ticks:
            if on_frame is not None:
                on_frame(engine, tick.first_frame)
            got = engine.generate(engine.extract(tick))
            blocks += got
            arrivals += [time.monotonic()] * len(got)
            time.sleep(pace_s)
        got = engine.finish()  # the blocks still in flight (after a reconnect, maybe all the rest)
        blocks += got
        arrivals += [time.monotonic()] * len(got)
    finally:
        engine.close()
    return blocks, arrivals, engine


def test_app_builder_builds_the_application_and_refuses_bad_args(tmp_path):
    from ray.serve.deployment import Application

    from avatarforcing.plugin.api.errors import ConfigError

    (tmp_path / "token").write_text("kube-secret\n")
    built = serving.app_builder({"engine": "default", "token_file": str(tmp_path / "token"), "set": ["model.nfe=6"]})
    assert isinstance(built, Application)
    with pytest.raises(ConfigError, match="needs a token file"):
        serving.app_builder({"engine": "default"})  # all interfaces (0.0.0.0) and no token
    with pytest.raises(ConfigError, match="unknown application arguments"):
        serving.app_builder({"engin": "default", "host": "127.0.0.1"})


# one live session in its own process, as each participant runs one: the session's stats (with
# the remote engine's network figures in them) as JSON on stdout
LIVE_SESSION = """
import json, sys
from avatarforcing.plugin.app.config import load_config
from avatarforcing.plugin.app.session import Session
from avatarforcing.plugin.host import build_plugin_host
session = Session(build_plugin_host(), load_config(overrides=sys.argv[1:], environ={}), duration=4.0)
print(json.dumps({"stats": session.run()}))
"""


def test_three_live_sessions_from_the_samples_keep_25_fps(server, samples_dir):
    import json
    import subprocess
    import sys

    url, token_file = server
    common = [
        "model.engine=remote",
        f"engines.remote.url={url}",
        f"engines.remote.token_file={token_file}",
        "sources.avatar_audio.use=audio-file",
        f"sources.avatar_audio.path={samples_dir / 'avatar.wav'}",
        "sources.avatar_audio.realtime=true",
        "sources.user_audio.use=audio-file",
        f"sources.user_audio.path={samples_dir / 'user.mp4'}",
        "sources.user_audio.realtime=true",
        "sources.user_video.use=video-file",
        f"sources.user_video.path={samples_dir / 'user.mp4'}",
        "sources.user_video.realtime=true",
    ]
    variants = {  # the user's face as JPEG (tracked on the server), as parameters, or not sent and
        # the frames rendered on the server (shown by remote-frames)
        1: ["engines.remote.video=jpeg", "render.use=puppet"],
        2: ["engines.remote.video=params", "render.use=puppet"],
        3: ["engines.remote.video=none", "engines.remote.render=puppet", "render.use=remote-frames"],
    }
    processes = {
        seed: subprocess.Popen(
            [sys.executable, "-c", LIVE_SESSION, *common, f"model.seed={seed}", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed, extra in variants.items()
    }
    results = {}
    for seed, process in processes.items():
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, (seed, err[-2000:])
        results[seed] = json.loads(out.strip().splitlines()[-1])
    for seed, result in results.items():
        stats = result["stats"]
        network = stats["network"]  # the session's stats carry the remote engine's network figures
        assert stats["error"] is None, (seed, stats["error"])
        # the pacer's 25 fps: a frame (rendered or held) every tick of the 4 s, a few ticks of the
        # session's start and end aside
        assert stats["frames"] >= 0.95 * 25 * 4 and stats["fps"] <= 25.5, (seed, stats["frames"], stats["live_s"])
        assert stats["blocks"] >= 10 and stats["rendered"] > 0, (seed, stats)
        # input captured -> frame out, through the server: bounded (2 CPU cores shared by 3 sessions
        # and their server, a few blocks of buffering at most)
        assert stats["latency"]["end_to_end"]["p50_ms"] < 2000.0, (seed, stats["latency"])
        assert network["block_round_trip"]["count"] > 0 and network["sent_bytes_per_s"] > 0, (seed, network)
        assert network["reconnects"] == 0 and not network["fallback"], (seed, network)


def test_concurrent_sessions_are_isolated_and_equal_local_runs(server, sample_ticks):
    url, token_file = server
    outputs: dict[int, np.ndarray] = {}

    def run(seed: int) -> None:
        blocks, _, _ = _remote(url, token_file, sample_ticks, seed)
        outputs[seed] = np.concatenate([b.latents for b in blocks])

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (5, 6, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(outputs) == [5, 6, 7]
    for seed, latents in outputs.items():
        assert np.array_equal(latents, _local(sample_ticks, seed)), seed
    assert not np.array_equal(outputs[5], outputs[6]) and not np.array_equal(outputs[6], outputs[7])


def test_a_killed_replica_costs_under_two_seconds(server, sample_ticks):
    import ray

    url, token_file = server
    killed: dict[str, object] = {}

    def kill_at(engine, frame):
        if frame == 30:
            killed["replica"] = engine.ready.replica
            killed["at"] = time.monotonic()
            ray.kill(ray.get_actor(engine.ready.replica, namespace="serve"))

    blocks, arrivals, engine = _remote(url, token_file, sample_ticks, 8, pace_s=0.04, on_frame=kill_at)
    assert [b.index for b in blocks] == list(range(len(blocks)))  # none lost, none twice
    assert np.array_equal(np.concatenate([b.latents for b in blocks]), _local(sample_ticks, 8))
    assert engine.stats.reconnects == 1 and engine.ready.replica != killed["replica"]
    after = [t for t in arrivals if t > killed["at"]]
    assert after and after[0] - killed["at"] < 2.0, after[:1]


def _raw_session(url: str, first: bytes | str):
    """Send `first` on a fresh WebSocket; returns ``(Ready or None, close code, reason)``."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(url, proxy=None, compression=None, open_timeout=30) as ws:
        ws.send(first)
        try:
            return decode(ws.recv(timeout=60)), None, None
        except ConnectionClosed as closed:
            return None, closed.rcvd.code if closed.rcvd else None, closed.rcvd.reason if closed.rcvd else ""


def test_bad_tokens_and_malformed_messages_close_only_their_session(server, sample_ticks, tmp_path):
    url, token_file = server
    (tmp_path / "wrong").write_text("guess\n")
    with pytest.raises(PluginError, match="refused the session: bad token"):
        RemoteEngine(url=url, token_file=str(tmp_path / "wrong"), video="none").open(_info(1))
    for first, reason in (
        (encode(Hello(token="")), "bad token"),
        ("hello", "binary"),
        (b"\x00" * 16, "bad magic"),
        (b"AF\x07\x02\x00\x00\x00{}", "version 7"),
        (encode(Tick(0, 1, np.zeros(640, np.float32), np.zeros(640, np.float32))), "first message must be a hello"),
        (encode(Hello(token=TOKEN, seed=-5)), "model.seed"),
        (encode(Hello(token=TOKEN, state=b"not a state")), "not a saved default-avatar stream"),
    ):
        ready, code, text = _raw_session(url, first)
        assert ready is None and code == serving.CLOSE_PROTOCOL and reason in text, (reason, code, text)
    # the replicas are alive and serve the next session
    blocks, _, _ = _remote(url, token_file, sample_ticks[:30], 9)
    assert len(blocks) >= 2


def test_a_full_server_refuses_clearly(server):
    from websockets.sync.client import connect

    url, _ = server
    sockets = []
    try:
        for _ in range(SESSIONS_PER_REPLICA * REPLICAS):  # every slot of every replica
            ws = connect(url, proxy=None, compression=None, open_timeout=60, legacy=True)
            sockets.append(ws)
            ws.send(encode(Hello(token=TOKEN)))
            assert isinstance(decode(ws.recv(timeout=60)), Ready)
        # one more waits in Serve's proxy for a free slot, and the client says why it got none
        with pytest.raises(PluginError, match="the server is full"):
            RemoteEngine(url=url, video="none", connect_timeout_s=3.0).open(_info(1))
    finally:
        for ws in sockets:
            ws.close()
    # a slot freed: the next session opens
    blocks, _, _ = _remote(url, server[1], [], 10)
    assert blocks == []
