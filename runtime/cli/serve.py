"""Run the gRPC daemon: serve the models of a config file until SIGTERM/SIGINT.

    e2edge serve --config daemon.yaml [--listen 127.0.0.1:50051 | unix:/run/e2edge/e2edge.sock]

The config is validated first (an error names the file, line and key). Models load
in the background while the server already answers health checks; a model that
fails to load is reported NOT_SERVING and the others are served. On SIGTERM or
SIGINT the daemon stops accepting requests, lets in-flight streams finish within
`grace_period_s`, and exits 0; a second signal cuts the grace period short. SIGHUP
re-reads the config and swaps models in place (runtime/server/core/lifecycle.py).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="the daemon's YAML config (every key: docs/reference/config.md)")
    parser.add_argument("--listen",
                        help="host:port or unix:/path to serve on instead of the config's "
                             "`listen`")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.config import load_config, with_listen
    from runtime.server.guard.request_log import configure_logging

    config = load_config(args.config)
    if args.listen:
        config = with_listen(config, args.listen)
    configure_logging(config.logging)
    return asyncio.run(serve(config, listen_override=args.listen))


async def serve(config, listen_override: str | None = None) -> int:
    import asyncio
    import logging
    import signal

    from runtime.server.daemon import create_server
    from runtime.server.sd_notify import Notifier, announce_ready

    log = logging.getLogger("e2edge.server")
    notifier = Notifier.from_environment()  # systemd Type=notify; a no-op elsewhere
    daemon, _ = await create_server(config)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    tasks: set[asyncio.Task] = set()  # the loop only keeps weak references to tasks

    def on_first_signal(sig: signal.Signals) -> None:
        daemon.begin_draining()  # before the log line: from here on new requests are refused
        log.info("%s received: draining (send it again to stop at once)", sig.name)
        stop_requested.set()
        for s in signals:
            loop.add_signal_handler(s, on_second_signal, s)

    def on_second_signal(sig: signal.Signals) -> None:
        log.warning("%s received again: cancelling in-flight requests", sig.name)
        tasks.add(loop.create_task(daemon.server.stop(0)))

    def on_reload() -> None:  # SIGHUP (systemctl reload): see runtime/server/core/lifecycle.py
        task = loop.create_task(daemon.reload_config_file(notifier, listen_override))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for s in signals:
        loop.add_signal_handler(s, on_first_signal, s)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    await daemon.start()
    tasks.add(loop.create_task(announce_ready(notifier, daemon)))
    watchdog = notifier.start_watchdog()
    await stop_requested.wait()
    notifier.stopping("draining in-flight requests")
    await daemon.stop()
    if watchdog is not None:
        watchdog.cancel()
    notifier.close()
    return 0
