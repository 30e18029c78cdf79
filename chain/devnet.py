"""A persistent local dev chain: foundry's anvil on 127.0.0.1, its state kept in a file.

anvil comes from npm (`@foundry-rs/anvil-linux-amd64`, installed by `make setup`) or from PATH.
With `--state FILE` it loads the chain from FILE when it exists and writes it back on exit, blocks
and logs included, so the events of earlier runs survive a restart.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from chain.compiler import contracts_dir
from chain.errors import ChainError

# anvil's first default dev account (funded with 10 000 ETH on every fresh anvil chain)
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


class DevnetError(ChainError):
    pass


def foundry_tool(name: str) -> Path:
    """`anvil` or `cast`: on PATH first, else the one npm installed for kdledger."""
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    local = contracts_dir().parent / "node_modules" / ".bin" / name
    if local.exists():
        return local
    raise DevnetError(f"{name} not found: run `make setup` (npm ci) or put foundry's {name} on PATH")


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Devnet:
    """One anvil process; `stop()` ends it by its PID and lets it write its state."""

    def __init__(
        self, port: int = 8545, state: Path | None = None, chain_id: int = 31337, block_time: float | None = None
    ):
        self.port, self.state, self.chain_id, self.block_time = port, state, chain_id, block_time
        self.process: subprocess.Popen | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> Devnet:
        if port_in_use(self.port):
            raise DevnetError(f"port {self.port} on 127.0.0.1 is already in use (another devnet?); pass --port")
        cmd = [
            str(foundry_tool("anvil")),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--silent",
        ]
        if self.state is not None:
            Path(self.state).parent.mkdir(parents=True, exist_ok=True)
            cmd += ["--state", str(self.state)]
        if self.block_time:
            cmd += ["--block-time", str(self.block_time)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while not port_in_use(self.port):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode().strip().splitlines() if self.process.stderr else []
                raise DevnetError(f"anvil exited at start: {err[-1] if err else 'no message'}")
            if time.monotonic() > deadline:
                self.stop()
                raise DevnetError(f"anvil did not listen on 127.0.0.1:{self.port} within {timeout_s:.0f} s")
            time.sleep(0.1)
        return self

    def stop(self, timeout_s: float = 30) -> None:
        """SIGINT, as Ctrl-C would: anvil writes its state file, then exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Devnet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
