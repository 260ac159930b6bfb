"""``avatarforcing serve``: run avatar sessions for remote clients on Ray Serve.

    avatarforcing serve [--address ADDR] [--engine NAME] [--backend NAME] [--host HOST]
                        [--port N] [--token-file FILE] [--tls-cert PEM --tls-key PEM]
                        [--gpus-per-replica X] [--cpus-per-replica X] [--sessions-per-replica N]
                        [--min-replicas N] [--max-replicas N] [--threads N] [--no-batch]
                        [--num-cpus N] [--duration S]

Starts a local Ray instance, or joins the cluster at ``--address`` (else ``$RAY_ADDRESS``),
and runs the serving application there (`avatarforcing.plugin.app.serving.app`); clients
connect to ``ws://HOST:PORT/avatar`` (``wss://`` with ``--tls-cert``/``--tls-key``) with
``avatarforcing run --engine remote --set engines.remote.url=...``. It listens on localhost
unless ``--host`` says otherwise, and a host other than localhost needs ``--token-file``.
The engine's settings come from the configuration as for ``run`` (``--set model.*``,
``--set engines.NAME.*``); each client chooses its seed and guidance. Runs until Ctrl-C (or
``--duration`` seconds), then shuts Serve and the Ray instance it started down.
Exit status: 0 after a clean stop, 1 when Ray cannot start, 2 for bad options.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--engine", help="motion engine served (default: [model] engine, i.e. `default`)")
    parser.add_argument("--backend", help="engine backend (as [model] backend)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000, help="port of ws://HOST:PORT/avatar (default: 8000)")
    parser.add_argument("--token-file", help="file whose first line is the token clients must send")
    parser.add_argument("--tls-cert", help="PEM certificate: serve wss:// (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs a replica reserves (default 0)")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs a replica reserves (default 1)")
    parser.add_argument("--sessions-per-replica", type=int, default=4, help="open sessions per replica (default 4)")
    parser.add_argument("--min-replicas", type=int, default=1, help="autoscaling lower bound (default 1)")
    parser.add_argument("--max-replicas", type=int, default=1, help="autoscaling upper bound (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per replica (default: torch's)")
    parser.add_argument("--no-batch", action="store_true", help="run each session's steps on its own thread")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)")


def settings_from_args(args: argparse.Namespace, context):
    """``(ServeSettings, engine name)`` from the parsed flags; bad values raise
    ConfigError/CommandError before anything starts."""
    from avatarforcing.plugin.app.serving.app import ServeSettings, token_digest
    from avatarforcing.plugin.app.serving.session import EngineSource, read_token

    overrides = [("model.engine", args.engine)] if args.engine else []
    if args.backend:
        overrides.append(("model.backend", args.backend))
    config = context.load_config(overrides)  # validated now: a bad --set fails before Ray starts
    digest = ""
    if args.token_file:
        try:
            digest = token_digest(read_token(args.token_file))
        except ValueError as error:
            raise CommandError(f"--token-file: {error}", exit_code=2) from None
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise CommandError(f"{flag}: file not found: {path}", exit_code=2)
    context.host.lookup("engines", config.model.engine)  # an unknown engine: one line now
    settings = ServeSettings(
        source=EngineSource(context.config_file, (*_as_pairs(context.overrides), *overrides)),
        host=args.host,
        port=args.port,
        token_sha256=digest,
        tls_cert=args.tls_cert or "",
        tls_key=args.tls_key or "",
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        sessions_per_replica=args.sessions_per_replica,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        threads=args.threads,
        batch=not args.no_batch,
    )
    return settings, config.model.engine


def _as_pairs(overrides) -> list[tuple[str, object]]:
    from avatarforcing.plugin.app.config import parse_override

    return [parse_override(o) if isinstance(o, str) else tuple(o) for o in overrides]


def _run(args: argparse.Namespace, context) -> int:
    import os

    from avatarforcing.plugin.app.serving.app import start, stop

    settings, engine = settings_from_args(args, context)
    address = args.address or context.environ.get("RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    console = context.console
    console.print(f"starting Ray Serve ({'joining ' + address if address else 'local Ray'}) ...")
    start(settings, address=address, num_cpus=args.num_cpus)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a service manager, `kill`) stops like Ctrl-C: the application, Serve and the
        # Ray instance this process started are shut down, not left running
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        token = ", token required" if settings.token_sha256 else ""
        console.print(f"serving sessions at {settings.url} (engine {engine!r}{token}); Ctrl-C stops")
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        stop()
    return 0


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


COMMAND = CommandSpec("serve", "serve avatar sessions to remote clients (Ray Serve, WebSocket)", _configure, _run)
