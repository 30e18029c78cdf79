"""Where the chain runs: in-process py-evm (eth-tester) by default, or any JSON-RPC node."""

from __future__ import annotations

import requests
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider
from web3.providers.rpc.utils import ExceptionRetryConfiguration

from chain.errors import ChainError

EMBEDDED = "embedded"


class ChainUnreachable(ChainError):
    pass


def connect(rpc_url: str | None = None) -> Web3:
    """A Web3 on the embedded py-evm chain (rpc_url None) or on the node at rpc_url."""
    if rpc_url is None:
        from eth_tester import EthereumTester, PyEVMBackend

        return Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend())))
    # transient failures of reads and raw sends are retried with exponential backoff (re-sending a
    # signed transaction is safe: its nonce lets it be mined once)
    retry = ExceptionRetryConfiguration(
        errors=(requests.ConnectionError, requests.HTTPError, requests.Timeout), retries=4, backoff_factor=0.25
    )
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}, exception_retry_configuration=retry))
    try:
        w3.eth.chain_id  # noqa: B018 - a real round trip
    except (requests.ConnectionError, requests.Timeout, OSError):
        raise ChainUnreachable(
            f"chain at {rpc_url} is unreachable (is the devnet running? `kdledger devnet`)"
        ) from None
    return w3


def is_embedded(w3: Web3) -> bool:
    return isinstance(w3.provider, EthereumTesterProvider)
