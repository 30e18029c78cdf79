"""Reading the explorer's sources and serving its app on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from chain.errors import ConfigError
from chain.events import read_events
from simulations.explore.app import Source

HOST = "127.0.0.1"  # never another interface: the page is for the person at this machine


def load_sources(run_dirs: list[Path], rpc: str | None, address: str | None) -> list[Source]:
    """One source per embedded run directory (its events.json), one per live chain (the run directories that
    recorded on the same chain and contract share it: their files and configurations are all found there), and
    the chain at --rpc/--address. A directory that is not a run, or a chain that does not answer, is an error."""
    if bool(rpc) != bool(address):
        raise ConfigError("--rpc and --address go together: the chain's URL and the ModelRegistry's address")
    if not run_dirs and not rpc:
        raise ConfigError("say what to explore: one or more run directories, or --rpc URL --address ADDR")
    sources: list[Source] = []
    live: dict[tuple[str, str], Source] = {}
    for run_dir in run_dirs:
        if not Path(run_dir).is_dir():
            raise ConfigError(f"{run_dir}: not a directory (a run directory written by `kdledger run`)")
        if not (Path(run_dir) / "chain.json").is_file():
            raise ConfigError(f"{run_dir}: no chain.json there (is it a run directory written by `kdledger run`?)")
        events, info = read_events(run_dir, None, None, whole_chain=True)
        if info.get("rpc_url"):
            key = (info["rpc_url"], str(info["contract"]).lower())
            if key in live:
                live[key].roots.append(Path(run_dir))
                continue
            live[key] = Source(info["rpc_url"], events, info, [Path(run_dir)])
            sources.append(live[key])
        else:
            sources.append(Source(str(run_dir), events, info, [Path(run_dir)]))
    if rpc and address:
        events, info = read_events(None, rpc, address, whole_chain=True)
        key = (rpc, str(info["contract"]).lower())
        if key not in live:
            sources.append(Source(rpc, events, info, []))
    return sources


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port (0: any free port); a port in use is the user's one-line error."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--port {port}: cannot listen on {HOST}:{port} ({exc.strerror}); try another port, or 0 for any"
        ) from None
    sock.listen(128)
    return sock


def open_in_browser(url: str) -> bool:
    """Open `url` in a graphical browser, in the background; False where there is none (no display on Linux: a
    text browser would take over the terminal the server runs in)."""
    import os
    import sys
    import threading
    import webbrowser

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    return True


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # serve() below owns the signals: a clean stop, not a re-raised SIGINT
        yield


def make_server(app, sock: socket.socket) -> uvicorn.Server:
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    return _Server(config)


def serve(app, sock: socket.socket, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM (a second Ctrl-C stops at once), then return."""
    server = make_server(app, sock)
    host, port = sock.getsockname()[:2]

    def stop(sig, frame):
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        if on_ready is not None:
            on_ready(f"http://{host}:{port}/")
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
