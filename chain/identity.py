"""Node identities and the EIP-712 messages they sign.

A data node never sends a transaction: it signs a Publication (its weights hash) or an Attestation
(the accuracy it measured) with its own key, and a relayer submits it. The typed data here must
match the PUBLISH/ATTEST typehashes in contracts/ModelRegistry.sol field for field.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from chain.errors import ConfigError
from chain.safejson import bounded_json

KIND_TEACHER, KIND_EBM, KIND_GENERATOR, KIND_STUDENT, KIND_AGGREGATE, KIND_BATCH = 1, 2, 3, 4, 5, 6
KIND_NAMES = {
    KIND_TEACHER: "teacher",
    KIND_EBM: "ebm",
    KIND_GENERATOR: "generator",
    KIND_STUDENT: "student",
    KIND_AGGREGATE: "aggregate",
    KIND_BATCH: "merkle-root",  # the root of many nodes' signed publications (chain/merkle.py)
}
PUBLISHED_KINDS = {name: kind for kind, name in KIND_NAMES.items() if kind <= KIND_GENERATOR}  # what a node signs
KIND_BY_NAME = {name: kind for kind, name in KIND_NAMES.items()}
DOMAIN_NAME, DOMAIN_VERSION = "kdledger ModelRegistry", "1"


@dataclass(frozen=True)
class Domain:
    chain_id: int
    contract: str

    def as_eip712(self) -> dict:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.contract,
        }


@dataclass(frozen=True)
class Publication:
    node: str
    model_hash: bytes
    kind: int
    round: int
    run_id: bytes
    uri: str
    nonce: int
    deadline: int

    TYPE = [
        ("node", "address"),
        ("modelHash", "bytes32"),
        ("kind", "uint8"),
        ("round", "uint32"),
        ("runId", "bytes32"),
        ("uri", "string"),
        ("nonce", "uint256"),
        ("deadline", "uint256"),
    ]

    def as_struct(self) -> tuple:
        return (self.node, self.model_hash, self.kind, self.round, self.run_id, self.uri, self.nonce, self.deadline)


@dataclass(frozen=True)
class Attestation:
    node: str
    model_hash: bytes
    run_id: bytes
    accuracy_bps: int
    num_examples: int
    nonce: int
    deadline: int

    TYPE = [
        ("node", "address"),
        ("modelHash", "bytes32"),
        ("runId", "bytes32"),
        ("accuracyBps", "uint16"),
        ("numExamples", "uint32"),
        ("nonce", "uint256"),
        ("deadline", "uint256"),
    ]

    def as_struct(self) -> tuple:
        return (
            self.node,
            self.model_hash,
            self.run_id,
            self.accuracy_bps,
            self.num_examples,
            self.nonce,
            self.deadline,
        )


def typed_data(message: Publication | Attestation, domain: Domain) -> dict:
    primary = type(message).__name__.replace("Publication", "Publish").replace("Attestation", "Attest")
    values = dict(zip((name for name, _ in message.TYPE), message.as_struct()))
    return {
        "types": {
            "EIP712Domain": [
                ("name", "string"),
                ("version", "string"),
                ("chainId", "uint256"),
                ("verifyingContract", "address"),
            ],
            primary: message.TYPE,
        },
        "primaryType": primary,
        "domain": domain.as_eip712(),
        "message": values,
    }


def _eip712_types(data: dict) -> dict:
    data = dict(data)
    data["types"] = {k: [{"name": n, "type": t} for n, t in v] for k, v in data["types"].items()}
    return data


def sign(account: LocalAccount, message: Publication | Attestation, domain: Domain) -> bytes:
    """The 65-byte signature of `account` over `message` in `domain`."""
    encoded = encode_typed_data(full_message=_eip712_types(typed_data(message, domain)))
    return bytes(account.sign_message(encoded).signature)


def compact(signature: bytes) -> tuple[bytes, bytes]:
    """A 65-byte (r, s, v) signature as EIP-2098's (r, vs): s with the parity of y in its top bit, what the
    registry's batches carry (one word less per record). A signature that is not 65 bytes with v 27 or 28, or
    whose s has its top bit set (a high-s signature, which the contract refuses anyway), is a ValueError."""
    if len(signature) != 65 or signature[64] not in (27, 28) or signature[32] & 0x80:
        raise ValueError("not a 65-byte low-s signature with v 27 or 28")
    vs = bytearray(signature[32:64])
    vs[0] |= (signature[64] - 27) << 7
    return signature[:32], bytes(vs)


def recover(message: Publication | Attestation, domain: Domain, signature: bytes) -> str:
    encoded = encode_typed_data(full_message=_eip712_types(typed_data(message, domain)))
    return Account.recover_message(encoded, signature=signature)


def derive_account(seed: int, label: str) -> LocalAccount:
    """A reproducible key for a simulated party (never use for value on a public chain)."""
    return Account.from_key(keccak(text=f"kdledger:{seed}:{label}"))


def run_id_of(name: str, config_hash: bytes) -> bytes:
    """keccak256(name)[:16] ++ config_hash[:16]; the runner passes "<scenario name>@<UTC start, ISO 8601>" and
    the SHA-256 of the scenario's decisive sections (config.json without `as_run`): see docs/contracts.md."""
    return keccak(text=name)[:16] + config_hash[:16]


KEY_PASSWORD_ENV = "KDLEDGER_KEY_PASSWORD"
# scrypt's cost for run keys: geth's "light" setting is 2**12, its standard 2**18 (about a second per
# key on one core, minutes for a 100-node run); 2**14 is 16 MiB and about 0.1 s per key.
KEYSTORE_SCRYPT_N = 2**14


def key_password() -> str | None:
    """The password of a run's encrypted key files, from the environment (never from a file in the run)."""
    return os.environ.get(KEY_PASSWORD_ENV) or None


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (created 0600, so never readable by others meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def save_key(account: LocalAccount, path: Path, password: str | None = None) -> None:
    """Write a party's key file, readable by its owner only: with a password, an encrypted keystore (Web3
    Secret Storage v3, scrypt); without, the plain key (throwaway keys of the embedded chain)."""
    if password is None:
        content = {"address": account.address, "private_key": account.key.hex()}
    else:
        content = Account.encrypt(account.key, password, kdf="scrypt", iterations=KEYSTORE_SCRYPT_N)
    write_private(path, json.dumps(content).encode())


def load_key(path: Path) -> LocalAccount:
    """A key file written by `save_key` (or any Web3 Secret Storage keystore, decrypted with
    KDLEDGER_KEY_PASSWORD); anything else is a ConfigError naming the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {type(exc).__name__}") from None
    return _load_key(str(path), raw, key_password())


@functools.lru_cache(maxsize=256)
def _load_key(path: str, raw: bytes, password: str | None) -> LocalAccount:
    """Cached by content and password: a node reads its key for every message, and scrypt is slow by design."""
    try:
        data = bounded_json(raw, "key file")
        if "crypto" in data or "Crypto" in data:
            if password is None:
                raise ConfigError(f"key file {path} is encrypted: set {KEY_PASSWORD_ENV} to its password")
            try:
                return Account.from_key(Account.decrypt(data, password))
            except ValueError:
                raise ConfigError(f"cannot decrypt key file {path}: wrong {KEY_PASSWORD_ENV}") from None
        return Account.from_key(data["private_key"])
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read key file {path}: {type(exc).__name__}") from None


__all__ = [
    "KIND_AGGREGATE",
    "KIND_BY_NAME",
    "KIND_EBM",
    "KIND_GENERATOR",
    "KIND_NAMES",
    "KIND_STUDENT",
    "KIND_TEACHER",
    "KEY_PASSWORD_ENV",
    "Attestation",
    "Domain",
    "Publication",
    "derive_account",
    "key_password",
    "load_key",
    "recover",
    "run_id_of",
    "save_key",
    "sign",
    "write_private",
]
