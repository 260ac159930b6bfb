"""The Ray Serve application behind ``avatarforcing serve``: WebSocket sessions on replicas.

One deployment, `AvatarServer`, with a FastAPI ingress: ``ws://HOST:PORT/avatar`` accepts one
session per WebSocket (`avatarforcing.plugin.app.serving.protocol`). A session lives on the
replica that accepted its WebSocket for the whole connection, so its state (KV caches, stream
state) never moves while it runs; replicas autoscale between `ServeSettings.min_replicas` and
`max_replicas` on the number of open sessions. A replica that dies takes its sessions'
connections with it: clients reconnect (Serve routes them to a live replica) and resume from
the `Checkpoint` they hold (`Hello.state`), replaying the ticks after it, so at most the
blocks in flight are computed twice and nothing is lost.

Concurrent steps of a replica's sessions go through `@serve.batch` when
`ServeSettings.batch` is on: one worker call runs the gathered steps back to back (the
engines have no batched step, so this saves thread hand-offs, not compute; docs/serving.md
has the measurement); off, each session's step runs on its own worker thread.

Ray and FastAPI are imported inside the functions: this module loads without the ``serve``
extra, and `start` says what to install when Ray is missing.
"""

# No `from __future__ import annotations` here: FastAPI reads the route handlers' annotations
# (`websocket: WebSocket`) at runtime, and WebSocket is imported inside `build_application`.
import asyncio
import hashlib
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from avatarforcing.plugin.api.errors import CommandError, ConfigError
from avatarforcing.plugin.app.serving.protocol import (
    Finish,
    Guidance,
    Hello,
    ProtocolError,
    Tick,
    decode,
    encode,
)
from avatarforcing.plugin.app.serving.session import EngineSource, ServedSession

log = logging.getLogger(__name__)

APP_NAME = "avatarforcing"
ROUTE = "/avatar"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# WebSocket close codes (RFC 6455): what a client reads from each refusal
CLOSE_PROTOCOL = 1008  # a malformed message, a bad token or bad settings
CLOSE_TOO_BIG = 1009
CLOSE_FULL = 1013  # try again later: every session slot of the replica is taken
CLOSE_ERROR = 1011


@dataclass(frozen=True)
class ServeSettings:
    """How ``avatarforcing serve`` runs. `host`/`port`: where Serve's HTTP proxy listens (a
    host other than localhost needs a token); `token_sha256`: SHA-256 hex of the token (the
    token itself never reaches Ray's state); `tls_cert`/`tls_key`: PEM files (wss://);
    `gpus_per_replica`, `cpus_per_replica`: Ray resources of a replica; `sessions_per_replica`:
    open sessions a replica accepts (more are refused with close code 1013); `min_replicas`/
    `max_replicas`: autoscaling bounds; `max_message_bytes`: larger messages close their
    session (1009); `hello_timeout_s`: a client that sends no `Hello` within it is closed;
    `threads`: torch threads per replica (0 = torch's default); `batch`: gather concurrent
    steps with `@serve.batch`."""

    source: EngineSource = field(default_factory=EngineSource)
    host: str = "127.0.0.1"
    port: int = 8000
    token_sha256: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    sessions_per_replica: int = 4
    min_replicas: int = 1
    max_replicas: int = 1
    max_message_bytes: int = 4 * 1024 * 1024
    hello_timeout_s: float = 10.0
    threads: int = 0
    batch: bool = True

    def __post_init__(self) -> None:
        if self.host not in LOCAL_HOSTS and not self.token_sha256:
            raise ConfigError("token_file", f"serving on {self.host!r} (not localhost only) needs a token file")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls", "TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        if self.sessions_per_replica < 1:
            raise ConfigError("sessions_per_replica", f"must be at least 1, got {self.sessions_per_replica}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError("replicas", f"need 1 <= min ({self.min_replicas}) <= max ({self.max_replicas})")

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls_cert else 'ws'}://{self.host}:{self.port}{ROUTE}"


def token_digest(token: str) -> str:
    """SHA-256 hex of a token: what the server keeps and compares."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _reason(text: str) -> str:
    """A WebSocket close reason fits 123 bytes of UTF-8."""
    data = text.encode("utf-8")[:120]
    return data.decode("utf-8", "ignore")


def build_application(settings: ServeSettings):
    """The Serve application (a bound `AvatarServer` deployment) for `serve.run`."""
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    from ray import serve

    api = FastAPI()
    batch_size = settings.sessions_per_replica

    class AvatarServer:
        """A replica: up to `sessions_per_replica` sessions, each on its own WebSocket."""

        def __init__(self, settings: ServeSettings) -> None:
            if settings.threads:
                import torch

                torch.set_num_threads(settings.threads)
            self.settings = settings
            self.sessions: dict[str, ServedSession] = {}
            self.pool = ThreadPoolExecutor(max_workers=settings.sessions_per_replica, thread_name_prefix="session")
            try:
                self.replica = serve.get_replica_context().replica_id.to_full_id_str()
            except Exception:  # outside a replica (never in production): an id is only informative
                self.replica = "local"

        @api.get("/health")
        async def health(self) -> dict:
            return {"sessions": len(self.sessions), "limit": self.settings.sessions_per_replica}

        @api.websocket(ROUTE)
        async def avatar(self, websocket: WebSocket) -> None:
            await websocket.accept()
            session = None
            try:
                session = await self._open(websocket)
                if session is None:
                    return
                await self._loop(websocket, session)
            except WebSocketDisconnect:
                pass
            except ProtocolError as error:
                log.info("session closed: %s", error)
                await self._close(websocket, CLOSE_PROTOCOL, str(error))
            except Exception as error:  # a bug or an engine failure ends this session, not the replica
                log.exception("session failed")
                await self._close(websocket, CLOSE_ERROR, f"server error: {type(error).__name__}: {error}")
            finally:
                if session is not None:
                    self.sessions.pop(session.session_id, None)
                    await asyncio.get_running_loop().run_in_executor(self.pool, session.close)

        async def _receive(self, websocket: WebSocket, timeout: float | None = None):
            message = await asyncio.wait_for(websocket.receive(), timeout)
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            data = message.get("bytes")
            if data is None:
                raise ProtocolError("messages are binary; got a text message")
            if len(data) > self.settings.max_message_bytes:
                raise _TooBig(f"message of {len(data)} bytes exceeds {self.settings.max_message_bytes}")
            return decode(data)

        async def _open(self, websocket: WebSocket) -> ServedSession | None:
            try:
                hello = await self._receive(websocket, self.settings.hello_timeout_s)
            except asyncio.TimeoutError:
                raise ProtocolError(f"no hello within {self.settings.hello_timeout_s:g} s") from None
            if not isinstance(hello, Hello):
                raise ProtocolError(f"the first message must be a hello, got {hello.TYPE}")
            expected = self.settings.token_sha256
            if expected and not hmac.compare_digest(token_digest(hello.token), expected):
                raise ProtocolError("bad token")
            if len(self.sessions) >= self.settings.sessions_per_replica:
                limit = self.settings.sessions_per_replica
                await self._close(websocket, CLOSE_FULL, f"server full: {limit} sessions per replica; try again later")
                return None
            session = ServedSession(self.settings.source, hello, self.replica)
            if session.session_id in self.sessions:
                raise ProtocolError("this session is already open on this replica")
            self.sessions[session.session_id] = session  # counted now: concurrent hellos see it
            try:
                ready = await asyncio.get_running_loop().run_in_executor(self.pool, session.open)
            except BaseException:
                self.sessions.pop(session.session_id, None)
                raise
            await websocket.send_bytes(encode(ready))
            return session

        async def _loop(self, websocket: WebSocket, session: ServedSession) -> None:
            while True:
                try:
                    message = await self._receive(websocket)
                except _TooBig as error:
                    await self._close(websocket, CLOSE_TOO_BIG, str(error))
                    return
                if isinstance(message, Tick):
                    replies = await self._step(lambda m=message: session.tick(m))
                elif isinstance(message, Guidance):
                    session.set_guidance(message.avatar, message.user)
                    continue
                elif isinstance(message, Finish):
                    replies = await self._step(session.finish)
                else:
                    raise ProtocolError(f"unexpected {message.TYPE} message from a client")
                for reply in replies:
                    await websocket.send_bytes(encode(reply))
                if isinstance(message, Finish):
                    await self._close(websocket, 1000, "finished")
                    return

        async def _step(self, job):
            if not self.settings.batch:
                return await asyncio.get_running_loop().run_in_executor(self.pool, job)
            result = await self._batched(job)
            if isinstance(result, Exception):
                raise result
            return result

        @serve.batch(max_batch_size=batch_size, batch_wait_timeout_s=0.0)
        async def _batched(self, jobs: list) -> list:
            def run_all() -> list:
                results = []
                for job in jobs:
                    try:
                        results.append(job())
                    except Exception as error:  # one session's failure is its own
                        results.append(error)
                return results

            return await asyncio.get_running_loop().run_in_executor(self.pool, run_all)

        async def _close(self, websocket: WebSocket, code: int, reason: str) -> None:
            try:
                await websocket.close(code=code, reason=_reason(reason))
            except Exception:  # already closed by the peer
                pass

    deployment = serve.deployment(
        serve.ingress(api)(AvatarServer),
        name="AvatarServer",
        ray_actor_options={"num_gpus": settings.gpus_per_replica, "num_cpus": settings.cpus_per_replica},
        # one open WebSocket is one ongoing request: Serve's router never sends a replica more
        # sessions than it holds (it tries another replica instead). When every replica is full,
        # a connection waits in the proxy for a free slot (or for the autoscaler's new replica,
        # which the waiting requests trigger); past a queue as long as the whole capacity the
        # proxy refuses at once (HTTP 500 for a WebSocket, its handshake never completes)
        max_ongoing_requests=settings.sessions_per_replica,
        max_queued_requests=settings.sessions_per_replica * settings.max_replicas,
        autoscaling_config={
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": max(1.0, 0.75 * settings.sessions_per_replica),
        },
    )
    return deployment.bind(settings)


def app_builder(args: dict):
    """The application from a Serve config's ``args`` (``serve run``, KubeRay's RayService
    ``import_path: avatarforcing.plugin.app.serving.app:app_builder``): ``engine``,
    ``sessions_per_replica``, ``min_replicas``, ``max_replicas``, ``gpus_per_replica``,
    ``cpus_per_replica``, ``threads``, ``token_file`` (read here; only its digest goes on),
    ``set`` (a list of ``"section.key=value"`` overrides). HTTP host, port and TLS belong to the
    Serve config's ``http_options``; ``host`` here only states whether a token is needed."""
    from avatarforcing.plugin.app.serving.session import read_token

    known = {"engine", "sessions_per_replica", "min_replicas", "max_replicas", "gpus_per_replica"}
    known |= {"cpus_per_replica", "threads", "token_file", "set", "host", "batch"}
    unknown = set(args) - known
    if unknown:
        raise ConfigError("args", f"unknown application arguments {sorted(unknown)}; known: {sorted(known)}")
    overrides: list[tuple[str, object]] = [("model.engine", str(args.get("engine", "default")))]
    for item in args.get("set", []):
        key, _, value = str(item).partition("=")
        overrides.append((key.strip(), value.strip()))
    token_file = args.get("token_file", "")
    settings = ServeSettings(
        source=EngineSource(overrides=tuple(overrides)),
        host=str(args.get("host", "0.0.0.0")),
        token_sha256=token_digest(read_token(token_file)) if token_file else "",
        gpus_per_replica=float(args.get("gpus_per_replica", 0.0)),
        cpus_per_replica=float(args.get("cpus_per_replica", 1.0)),
        sessions_per_replica=int(args.get("sessions_per_replica", 4)),
        min_replicas=int(args.get("min_replicas", 1)),
        max_replicas=int(args.get("max_replicas", 1)),
        threads=int(args.get("threads", 0)),
        batch=bool(args.get("batch", True)),
    )
    return build_application(settings)


class _TooBig(ProtocolError):
    """A message over the size limit (close code 1009)."""


def start(settings: ServeSettings, address: str | None = None, num_cpus: int | None = None) -> None:
    """Start Ray (join `address`, else ``$RAY_ADDRESS``, else a local instance), Serve's HTTP
    proxy on `settings.host`:`settings.port` (HTTPS/WSS with the TLS files) and the application.
    Returns when the application is ready; `stop()` shuts it down."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise CommandError("serving needs Ray Serve: pip install 'avatarforcing[serve]'") from None
    if not ray.is_initialized():
        try:
            ray.init(
                address=address or None,
                num_cpus=num_cpus if not address else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except ConnectionError as error:
            raise CommandError(f"cannot join the Ray cluster at {address!r}: {error}") from None
    http = {"host": settings.host, "port": settings.port}
    if settings.tls_cert:
        http.update(ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key)
    serve.start(http_options=http)
    serve.run(build_application(settings), name=APP_NAME, route_prefix="/", blocking=False)


def stop() -> None:
    """Shut the application, Serve and the Ray instance this process started or joined down."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
