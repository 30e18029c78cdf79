"""A typed client for ModelRegistry over either backend.

Reverts surface as RegistryError carrying the contract's error name and arguments, whichever way
the backend reports them (eth-tester raises TransactionFailed, JSON-RPC raises ContractCustomError).
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from eth_typing import ABIFunction, ChecksumAddress
from eth_utils import collapse_if_tuple, function_abi_to_4byte_selector, keccak, to_checksum_address
from web3 import Web3
from web3._utils.transactions import fill_transaction_defaults  # what build_transaction fills a call with
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound, Web3Exception
from web3.types import TxReceipt, Wei

from chain.backends import is_embedded
from chain.compiler import load_artifact
from chain.errors import ChainError, ConfigError
from chain.identity import DOMAIN_NAME, DOMAIN_VERSION, KIND_BATCH, Attestation, Domain, Publication, compact
from chain.merkle import ProvenLeaf, PublicationLeaf, leaf_fault

ROLES = {name: keccak(text=f"{name}_ROLE") for name in ("DATA_NODE", "DISTILLER", "RELAYER")}


class RegistryError(ChainError):
    """A revert of ModelRegistry, by the contract's own error name."""

    def __init__(self, name: str, args: tuple = (), tx: str = ""):
        self.name, self.args_, self.tx = name, args, tx
        shown = ", ".join("0x" + a.hex() if isinstance(a, bytes) else str(a) for a in args)
        super().__init__(f"{name}({shown})")


@dataclass(frozen=True)
class ModelRecord:
    owner: str
    kind: int
    round: int
    block: int

    @property
    def registered(self) -> bool:
        return self.kind != 0


@dataclass(frozen=True)
class Lineage:
    config_hash: bytes
    sample_count: int
    method: str
    teacher_hashes: tuple[bytes, ...]


def _error_table(abi: list[dict]) -> dict[bytes, tuple[str, list[str]]]:
    table = {}
    for item in abi:
        if item["type"] == "error":
            types = [i["type"] for i in item["inputs"]]
            table[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types)
    return table


def _revert_data(exc: Exception) -> bytes | None:
    candidates = [getattr(exc, "data", None), *exc.args]
    for c in candidates:
        if isinstance(c, bytes) and len(c) >= 4:
            return c
        literal = re.search(r"""b['"]""", c) if isinstance(c, str) else None
        if literal:  # eth-tester: "execution reverted: b'...'" (or b"..." when the data holds a quote)
            try:
                return ast.literal_eval(c[literal.start() :])
            except (ValueError, SyntaxError):
                continue
        if isinstance(c, str):
            text = c.strip("'\" ")
            if text.startswith("0x") and len(text) >= 10:
                try:
                    return bytes.fromhex(text[2:])
                except ValueError:
                    continue
    return None


def checksummed(address: str, what: str) -> str:
    """An address as given (any case, 0x and 40 hex digits) in its EIP-55 form; a ConfigError naming `what`
    otherwise. A mixed-case address must already be EIP-55: a wrong case there is a typo, not a style."""
    if not isinstance(address, str) or not Web3.is_address(address):
        raise ConfigError(f"{what} {address!r}: not an Ethereum address (0x and 40 hex digits, EIP-55 if mixed case)")
    return to_checksum_address(address)


def lineage_path(model: bytes, owned: set[bytes], sources: Mapping[bytes, Sequence[bytes]]) -> list[int] | None:
    """The shortest path of source indexes from `model` to a model in `owned` (what attestAccuracy checks
    on-chain), following `sources` (a derived model's lineage as registered); None if there is none."""
    frontier: list[tuple[bytes, list[int]]] = [(model, [])]
    seen = {model}
    while frontier:
        following = []
        for h, path in frontier:
            if h in owned:
                return path
            for i, source in enumerate(sources.get(h, ())):
                if source not in seen:
                    seen.add(source)
                    following.append((source, [*path, i]))
        frontier = following
    return None


class Registry:
    """ModelRegistry at one address on one chain. `chain_seconds` adds up the time spent talking to it."""

    def __init__(self, w3: Web3, address: str):
        self.w3 = w3
        self.chain_seconds = 0.0
        artifact = load_artifact()
        self.contract = w3.eth.contract(address=to_checksum_address(address), abi=artifact["abi"])
        self._errors = _error_table(artifact["abi"])
        self._functions = {f["name"]: f for f in artifact["abi"] if f["type"] == "function"}

    @property
    def address(self) -> ChecksumAddress:
        return self.contract.address

    @classmethod
    def deploy(cls, w3: Web3, admin: LocalAccount) -> tuple[Registry, str]:
        artifact = load_artifact()
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = send(w3, factory.constructor(admin.address), admin)
        address = receipt["contractAddress"]
        if address is None:
            raise ChainError(f"ModelRegistry deploy {receipt['transactionHash'].to_0x_hex()}: no contract address")
        return cls(w3, address), receipt["transactionHash"].to_0x_hex()

    # -- writes ------------------------------------------------------------------------------
    def _send(self, fn, sender: LocalAccount) -> TxReceipt:
        start = time.perf_counter()
        try:
            return send(self.w3, fn, sender)
        except (TransactionFailed, ContractCustomError, ContractLogicError) as exc:
            raise self.decode_revert(exc) from None
        finally:
            self.chain_seconds += time.perf_counter() - start

    def _call(self, fn):
        start = time.perf_counter()
        try:
            return fn.call()
        finally:
            self.chain_seconds += time.perf_counter() - start

    def decode_revert(self, exc: Exception) -> RegistryError:
        data = _revert_data(exc)
        if data is None or data[:4] not in self._errors:
            return RegistryError("Reverted", (str(exc),))
        name, types = self._errors[data[:4]]
        return RegistryError(name, tuple(abi_decode(types, data[4:])))

    def grant(self, role: str, account: str, admin: LocalAccount) -> str:
        return self._send(self.contract.functions.grantRole(ROLES[role], account), admin)["transactionHash"].to_0x_hex()

    def grant_many(self, grants: Sequence[tuple[str, str]], admin: LocalAccount, batch_size: int = 100) -> list[str]:
        """Grant (role, account) pairs, `batch_size` per transaction through the registry's multicall; the
        transaction hash each pair went in."""
        hashes = []
        for start in range(0, len(grants), batch_size):
            chunk = grants[start : start + batch_size]
            if len(chunk) == 1:
                hashes.append(self.grant(*chunk[0], admin))
                continue
            calls = [calldata(self._functions["grantRole"], [ROLES[role], account]) for role, account in chunk]
            tx = self._send(self.contract.functions.multicall(calls), admin)["transactionHash"].to_0x_hex()
            hashes += [tx] * len(chunk)
        return hashes

    def revoke(self, role: str, account: str, admin: LocalAccount) -> str:
        return self._send(self.contract.functions.revokeRole(ROLES[role], account), admin)[
            "transactionHash"
        ].to_0x_hex()

    def register_teacher(self, pub: Publication, signature: bytes, relayer: LocalAccount) -> TxReceipt:
        return self._send(self.contract.functions.registerTeacher(pub.as_struct(), signature), relayer)

    def register_teachers(
        self, pubs: Sequence[Publication], signatures: Sequence[bytes], relayer: LocalAccount
    ) -> TxReceipt:
        """Relay many signed publications of one run, round, uri and deadline in one transaction
        (`registerTeachers`): each signature is checked on-chain, each record and event is registerTeacher's."""
        first = pubs[0]
        if any(
            (p.run_id, p.round, p.uri, p.deadline) != (first.run_id, first.round, first.uri, first.deadline)
            for p in pubs
        ):
            raise ValueError("a batch of publications shares one run id, round, uri and deadline")
        parts = [
            (p.node, p.model_hash, p.kind, p.nonce, *compact(sig)) for p, sig in zip(pubs, signatures, strict=True)
        ]
        fn = self.contract.functions.registerTeachers(first.run_id, first.round, first.uri, first.deadline, parts)
        return self._send(fn, relayer)

    def commit_student(
        self,
        model_hash: bytes,
        run_id: bytes,
        teacher_hashes: list[bytes],
        method: str,
        config_hash: bytes,
        sample_count: int,
        uri: str,
        distiller: LocalAccount,
    ) -> TxReceipt:
        fn = self.contract.functions.commitStudent(
            model_hash, run_id, teacher_hashes, method, config_hash, sample_count, uri
        )
        return self._send(fn, distiller)

    def register_aggregate(
        self,
        model_hash: bytes,
        run_id: bytes,
        round_: int,
        sources: list[bytes],
        method: str,
        example_count: int,
        uri: str,
        relayer: LocalAccount,
    ) -> TxReceipt:
        fn = self.contract.functions.registerAggregate(model_hash, run_id, round_, sources, method, example_count, uri)
        return self._send(fn, relayer)

    def attest(self, att: Attestation, signature: bytes, relayer: LocalAccount, path: Sequence[int] = ()) -> TxReceipt:
        """Relay an attestation; `path` leads from the model through its sources to one the node registered
        (see lineage_path), empty when the node registered the model itself."""
        fn = self.contract.functions.attestAccuracy(att.as_struct(), signature, list(path))
        return self._send(fn, relayer)

    def attest_batch(
        self,
        atts: Sequence[Attestation],
        signatures: Sequence[bytes],
        paths: Sequence[Sequence[int]],
        relayer: LocalAccount,
    ) -> TxReceipt:
        """Relay many signed attestations of one run and deadline in one transaction (`attestBatch`), each with
        its lineage path (see `attest`)."""
        first, parts = atts[0], _batched_attestations(atts, signatures)
        fn = self.contract.functions.attestBatch(first.run_id, first.deadline, parts, [list(p) for p in paths])
        return self._send(fn, relayer)

    def commit_publications(
        self, root: bytes, run_id: bytes, round_: int, count: int, uri: str, relayer: LocalAccount
    ) -> TxReceipt:
        """Commit the Merkle root of `count` signed publications of one run and round (chain/merkle.py)."""
        return self._send(self.contract.functions.commitPublications(root, run_id, round_, count, uri), relayer)

    def attest_batch_through_roots(
        self,
        atts: Sequence[Attestation],
        signatures: Sequence[bytes],
        paths: Sequence[Sequence[int]],
        leaves: Sequence[PublicationLeaf],
        proofs: Sequence[Sequence[bytes]],
        relayer: LocalAccount,
    ) -> TxReceipt:
        """attest_batch for models whose lineage reaches a root of publications: each path ends at a root,
        where the attesting node's leaf and its proof show that its data went in."""
        first, parts = atts[0], _batched_attestations(atts, signatures)
        # the contract proves a leaf once for attestations in a row through the same root: no proof again
        sent = [
            [] if j and (leaf, proof) == (leaves[j - 1], proofs[j - 1]) else list(proof)
            for j, (leaf, proof) in enumerate(zip(leaves, proofs, strict=True))
        ]
        fn = self.contract.functions.attestBatchThroughRoots(
            first.run_id,
            first.deadline,
            parts,
            [list(p) for p in paths],
            [leaf.as_struct() for leaf in leaves],
            sent,
        )
        return self._send(fn, relayer)

    # -- reads -------------------------------------------------------------------------------
    def is_model_registry(self) -> bool:
        """Whether the contract at this address is a kdledger ModelRegistry (whose events can be read): code
        there, and an ERC-5267 EIP-712 domain with our name and version (what every signature it checks is
        bound to)."""
        try:
            if not self.w3.eth.get_code(self.address):
                return False
            _, name, version, *_ = self.contract.functions.eip712Domain().call()
        except (Web3Exception, ValueError, TransactionFailed):
            return False
        return (name, version) == (DOMAIN_NAME, DOMAIN_VERSION)

    def has_batches(self) -> bool:
        """Whether it has the batch calls a run uses (a registry deployed before them has no `multicall`)."""
        try:
            self.contract.functions.multicall([]).call()
        except (Web3Exception, ValueError, TransactionFailed):
            return False
        return True

    def domain(self) -> Domain:
        return Domain(chain_id=self.w3.eth.chain_id, contract=self.address)

    def read_many(self, function: str, args: Sequence[Sequence], batch_size: int = 200) -> list:
        """`function` (a view) called with each of `args`, `batch_size` calls per eth_call through the
        registry's multicall: a federation's nonces or records in a few round trips instead of one each."""
        outputs = [collapse_if_tuple(o) for o in self._functions[function]["outputs"]]
        results = []
        for start in range(0, len(args), batch_size):
            chunk = args[start : start + batch_size]
            calls = [calldata(self._functions[function], a) for a in chunk]
            for raw in self._call(self.contract.functions.multicall(calls)):
                (value,) = abi_decode(outputs, raw)
                results.append(value)
        return results

    def nonce(self, account: str) -> int:
        return self._call(self.contract.functions.nonces(account))

    def nonces(self, accounts: Sequence[str]) -> list[int]:
        return self.read_many("nonces", [(a,) for a in accounts])

    def has_role(self, role: str, account: str) -> bool:
        return self._call(self.contract.functions.hasRole(ROLES[role], account))

    def have_role(self, role: str, accounts: Sequence[str]) -> list[bool]:
        return self.read_many("hasRole", [(ROLES[role], a) for a in accounts])

    def model(self, model_hash: bytes) -> ModelRecord:
        owner, kind, rnd, block = self._call(self.contract.functions.modelOf(model_hash))
        return ModelRecord(owner, kind, rnd, block)

    def models(self, model_hashes: Sequence[bytes]) -> list[ModelRecord]:
        records = self.read_many("modelOf", [(h,) for h in model_hashes])
        return [ModelRecord(to_checksum_address(owner), *rest) for owner, *rest in records]  # as web3's calls give

    def publications_included(
        self, root: bytes, proven: Sequence[tuple[PublicationLeaf, Sequence[bytes]]]
    ) -> list[bool]:
        """For each (leaf, proof): whether it is a publication in `root`, signed by its node, as the contract's
        `publicationIncluded` decides. The root's record is read from the chain and each proof and signature
        checked here against it: the same computation, where a thousand eth_calls of the view took 6 s on py-evm."""
        batch, domain = self.model(root), self.domain()
        return [
            batch.kind == KIND_BATCH
            and batch.round == leaf.publication.round
            and leaf_fault(ProvenLeaf(leaf, list(proof)), root, domain) is None
            for leaf, proof in proven
        ]

    def lineage(self, student_hash: bytes) -> Lineage:
        config_hash, count, method, teachers = self._call(self.contract.functions.lineageOf(student_hash))
        return Lineage(config_hash, count, method, tuple(teachers))

    def accuracy(self, model_hash: bytes, node: str) -> tuple[int, int, int]:
        return tuple(self._call(self.contract.functions.accuracyOf(model_hash, node)))

    def accuracies(self, pairs: Sequence[tuple[bytes, str]]) -> list[tuple[int, int, int]]:
        """accuracyOf for each (model hash, node) pair, in few round trips."""
        return [tuple(a) for a in self.read_many("accuracyOf", pairs)]

    def deadline(self, seconds: int = 3600) -> int:
        """A deadline `seconds` after the chain's own clock (not this machine's)."""
        start = time.perf_counter()
        try:
            return self.w3.eth.get_block("latest")["timestamp"] + seconds
        finally:
            self.chain_seconds += time.perf_counter() - start


def _batched_attestations(atts: Sequence[Attestation], signatures: Sequence[bytes]) -> list[tuple]:
    """The BatchedAttestation parts of one run's and deadline's attestations (what a batch carries per record)."""
    first = atts[0]
    if any((a.run_id, a.deadline) != (first.run_id, first.deadline) for a in atts):
        raise ValueError("a batch of attestations shares one run id and deadline")
    return [
        (a.node, a.model_hash, a.accuracy_bps, a.num_examples, a.nonce, *compact(sig))
        for a, sig in zip(atts, signatures, strict=True)
    ]


# On the embedded chain gas costs nothing and eth_estimateGas is a binary search that executes the
# call many times (over half of each transaction's time, measured); a fixed limit skips it.
# Receipts still report the exact gasUsed; a revert is then mined with status 0, and `send` replays
# the call on the state before it to raise the contract's own error.
# The limit is just under eth-tester's block gas limit (30 029 122): a student or aggregate of 1 000 nodes
# stores 1 000 source hashes in its lineage, about 25 000 gas each (a 10M limit ran out of gas there).
EMBEDDED_GAS_LIMIT = 30_000_000


def calldata(abi: ABIFunction, args: Sequence) -> bytes:
    """A call's data encoded by eth-abi directly: the same bytes as web3's encoder (tested), which first walks
    every argument through its normalisers in Python (0.18 s for a batch of 100 attestations, 0.02 s here)."""
    return function_abi_to_4byte_selector(abi) + abi_encode([collapse_if_tuple(i) for i in abi["inputs"]], list(args))


def send(w3: Web3, fn, sender: LocalAccount) -> TxReceipt:
    """Sign locally with `sender` (works on any RPC), send, and wait for the receipt."""
    fields = {
        "from": sender.address,
        "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
        "chainId": w3.eth.chain_id,
    }
    if is_embedded(w3):
        fields["gas"] = EMBEDDED_GAS_LIMIT
    if isinstance(fn, ContractFunction) and not fn.kwargs:
        tx = fill_transaction_defaults(w3, {**fields, "to": fn.address, "data": calldata(fn.abi, fn.args)})
    else:  # a deployment
        tx = fn.build_transaction(fields)
    signed = sender.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = _wait_for_receipt(w3, tx_hash)
    if receipt["status"] != 1:
        if hasattr(fn, "call"):  # the reason is not in the receipt: replay on the state before the block
            fn.call({"from": sender.address}, block_identifier=receipt["blockNumber"] - 1)
        raise RegistryError("Reverted", (tx_hash.to_0x_hex(),), tx=tx_hash.to_0x_hex())
    return receipt


def _wait_for_receipt(w3: Web3, tx_hash, timeout: float = 120.0) -> TxReceipt:
    """The transaction's receipt, polled from 5 ms doubling up to 1 s: a dev chain (anvil, py-evm) mines on
    arrival and answers at once, where web3's fixed 100 ms poll would add its latency to every transaction;
    a chain with 12 s blocks is still polled about once a second."""
    deadline, pause = time.monotonic() + timeout, 0.005
    while True:
        try:
            return w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            if time.monotonic() > deadline:
                raise ChainError(f"transaction {tx_hash.to_0x_hex()} not mined within {timeout:.0f} s") from None
            time.sleep(pause)
            pause = min(2 * pause, 1.0)


def fund(w3: Web3, accounts: list[str], wei: int = 10**20) -> None:
    """Give dev-chain ether to `accounts` from the chain's first unlocked account."""
    funder = w3.eth.accounts[0]
    for account in accounts:
        if w3.eth.get_balance(Web3.to_checksum_address(account)) < wei // 2:
            tx = w3.eth.send_transaction({"from": funder, "to": account, "value": Wei(wei)})
            w3.eth.wait_for_transaction_receipt(tx)
