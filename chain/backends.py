"""Where the chain runs: in-process py-evm (eth-tester) by default, or any JSON-RPC node."""

from __future__ import annotations

import time

import requests
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider

EMBEDDED = "embedded"


class ChainUnreachable(RuntimeError):
    pass


def connect(rpc_url: str | None = None, *, retries: int = 3, backoff_s: float = 0.5) -> Web3:
    """A Web3 on the embedded py-evm chain (rpc_url None) or on the node at rpc_url."""
    if rpc_url is None:
        from eth_tester import EthereumTester, PyEVMBackend

        return Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend())))
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    for attempt in range(retries):
        try:
            w3.eth.chain_id  # noqa: B018 - a real round trip
            return w3
        except (requests.ConnectionError, requests.Timeout, OSError):
            if attempt == retries - 1:
                break
            time.sleep(backoff_s * 2**attempt)
    raise ChainUnreachable(f"chain at {rpc_url} is unreachable (is the devnet running? `kdledger devnet`)")


def is_embedded(w3: Web3) -> bool:
    return isinstance(w3.provider, EthereumTesterProvider)
