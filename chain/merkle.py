"""Merkle roots of signed publications: the tree the relayer commits, the proofs a verifier checks.

The tree is the one OpenZeppelin's MerkleProof verifies: a leaf is keccak256(keccak256(abi.encode(
PublicationLeaf))) (hashed twice, so no inner node can pass for a leaf), a parent is the keccak256 of its
two children in ascending order, and the leaves are sorted by hash, so that the same publications give the
same root whatever order the nodes replied in. A layer of odd length carries its last node up unchanged.
A proof is the sibling hashes from a leaf up to the root.

A root's leaves and proofs live in the run directory, `merkle/0x<root>.json` (`write_proofs`); each is
checked against the root and the node's EIP-712 signature before it is believed (`read_proofs`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from chain.errors import ArtifactError
from chain.identity import PUBLISHED_KINDS, Domain, Publication, compact, recover
from chain.safejson import bounded_json

MERKLE_DIR = "merkle"
_LEAF_TYPES = [
    "address",
    "bytes32",
    "uint8",
    "uint32",
    "bytes32",
    "bytes32",
    "uint256",
    "uint256",
    "bytes32",
    "bytes32",
]


@dataclass(frozen=True)
class PublicationLeaf:
    """A node's signed publication as a leaf: the Publication and its 65-byte signature."""

    publication: Publication
    signature: bytes

    def as_struct(self) -> tuple:
        """The contract's PublicationLeaf: the Publication with keccak256(uri), and the compact signature."""
        p = self.publication
        r, vs = compact(self.signature)
        return (p.node, p.model_hash, p.kind, p.round, p.run_id, keccak(text=p.uri), p.nonce, p.deadline, r, vs)

    @property
    def hash(self) -> bytes:
        return keccak(keccak(encode(_LEAF_TYPES, self.as_struct())))


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


def verify(proof: Sequence[bytes], root: bytes, leaf: bytes) -> bool:
    """Whether `proof` leads from `leaf` to `root` (OpenZeppelin's MerkleProof.verify)."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root


class MerkleTree:
    """The tree of some leaf hashes (at least one, no two equal)."""

    def __init__(self, leaves: Sequence[bytes]):
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        if len(set(leaves)) != len(leaves):
            raise ValueError("a Merkle tree's leaves must differ")
        self.layers = [sorted(leaves)]
        while len(self.layers[-1]) > 1:
            below = self.layers[-1]
            self.layers.append(
                [hash_pair(*below[i : i + 2]) if i + 1 < len(below) else below[i] for i in range(0, len(below), 2)]
            )
        self._index = {leaf: i for i, leaf in enumerate(self.layers[0])}

    @property
    def root(self) -> bytes:
        return self.layers[-1][0]

    def proof(self, leaf: bytes) -> list[bytes]:
        """The siblings from `leaf` up to the root; KeyError if it is not a leaf."""
        i, siblings = self._index[leaf], []
        for layer in self.layers[:-1]:
            if i ^ 1 < len(layer):
                siblings.append(layer[i ^ 1])
            i //= 2
        return siblings


@dataclass(frozen=True)
class ProvenLeaf:
    """A publication shown to be in a root: its leaf and the proof that leads to the root."""

    leaf: PublicationLeaf
    proof: list[bytes]

    @property
    def publication(self) -> Publication:
        return self.leaf.publication


def proofs_path(run_dir: Path, root: bytes) -> Path:
    return Path(run_dir) / MERKLE_DIR / f"0x{root.hex()}.json"


def write_proofs(run_dir: Path, leaves: Sequence[PublicationLeaf]) -> tuple[bytes, Path, list[ProvenLeaf]]:
    """The root of `leaves`, its proofs file under run_dir/merkle/ (every leaf's publication, signature and
    proof, in the tree's order: what a node keeps to show that its publication is in the root), and each of
    `leaves` with its proof, in their order."""
    tree = MerkleTree([leaf.hash for leaf in leaves])
    records = []
    for leaf in sorted(leaves, key=lambda x: x.hash):
        p = leaf.publication
        records.append(
            {
                "node": p.node,
                "model_hash": "0x" + p.model_hash.hex(),
                "kind": p.kind,
                "round": p.round,
                "run_id": "0x" + p.run_id.hex(),
                "uri": p.uri,
                "nonce": p.nonce,
                "deadline": p.deadline,
                "signature": "0x" + leaf.signature.hex(),
                "leaf": "0x" + leaf.hash.hex(),
                "proof": ["0x" + s.hex() for s in tree.proof(leaf.hash)],
            }
        )
    path = proofs_path(run_dir, tree.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"root": "0x" + tree.root.hex(), "count": len(records), "leaves": records}, indent=1) + "\n"
    )
    return tree.root, path, [ProvenLeaf(leaf, tree.proof(leaf.hash)) for leaf in leaves]


def _bytes32(value: object, what: str) -> bytes:
    raw = bytes.fromhex(str(value).removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"{what} is {len(raw)} bytes, not 32")
    return raw


def _uint(value: object, bits: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value < 2**bits:
        raise ValueError(f"{what} {value!r} is not a uint{bits}")
    return value


def _leaf_of(rec: dict) -> ProvenLeaf:
    """One record of a proofs file, its fields typed and bounded as the contract's PublicationLeaf."""
    pub = Publication(
        node=to_checksum_address(rec["node"]),
        model_hash=_bytes32(rec["model_hash"], "model_hash"),
        kind=_uint(rec["kind"], 8, "kind"),
        round=_uint(rec["round"], 32, "round"),
        run_id=_bytes32(rec["run_id"], "run_id"),
        uri=str(rec["uri"]),
        nonce=_uint(rec["nonce"], 256, "nonce"),
        deadline=_uint(rec["deadline"], 256, "deadline"),
    )
    leaf = PublicationLeaf(pub, bytes.fromhex(str(rec["signature"]).removeprefix("0x")))
    return ProvenLeaf(leaf, [_bytes32(s, "a proof step") for s in rec["proof"]])


def leaf_fault(p: ProvenLeaf, root: bytes, domain: Domain | None) -> str | None:
    """Why `p` is not a publication in `root`, or None: its proof must lead to the root, its kind be one a node
    publishes, and (with `domain`) its signature recover to its node. With the root's own record on-chain (a
    KIND_BATCH of the leaf's round) this is what the contract's `publicationIncluded` decides, computed here."""
    if not verify(p.proof, root, p.leaf.hash):
        return f"is not in root 0x{root.hex()}"
    if p.publication.kind not in PUBLISHED_KINDS.values():
        return f"has kind {p.publication.kind}, not 1 to 3"
    try:
        signer = recover(p.publication, domain, p.leaf.signature) if domain is not None else p.publication.node
    except Exception:  # eth-keys raises its own BadSignature on a malformed one
        signer = None
    if signer != p.publication.node:
        return "is not signed by its node"
    return None


def read_proofs(path: Path, root: bytes, domain: Domain | None = None) -> list[ProvenLeaf]:
    """The leaves of `root` from its proofs file, each checked: its fields are well-formed, its proof leads to
    `root`, its kind is one a node publishes, and (with `domain`) its signature recovers to its node; and the
    file's leaves, no two alike, are exactly the tree of `root` (so none is missing, repeated or added).
    Anything else is an ArtifactError naming the file and the leaf."""
    where = f"{path}"
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{where}: not a proofs file ({type(exc).__name__}: {exc})") from None
    return list(_checked_proofs(raw, root, domain, where))


@functools.lru_cache(maxsize=32)
def _checked_proofs(raw: bytes, root: bytes, domain: Domain | None, where: str) -> tuple[ProvenLeaf, ...]:
    """read_proofs' checks, once per content (the key is the file's bytes, so an edited file is checked again):
    the explorer reads the same proofs files at every request, a thousand signatures each."""
    try:
        doc = bounded_json(raw, where)
        if not isinstance(doc, dict) or doc.get("root") != "0x" + root.hex():
            raise ArtifactError(f"{where}: not the proofs of root 0x{root.hex()}")
        proven = []
        for i, rec in enumerate(doc["leaves"]):
            p = _leaf_of(rec)
            fault = leaf_fault(p, root, domain)
            if fault is not None:
                raise ArtifactError(f"{where}: leaf {i} (node {p.publication.node}) {fault}")
            proven.append(p)
        hashes = [p.leaf.hash for p in proven]
        if len(set(hashes)) != len(hashes) or MerkleTree(hashes).root != root:
            raise ArtifactError(
                f"{where}: its leaves are not the tree of root 0x{root.hex()} (one repeated or missing)"
            )
    except ArtifactError:
        raise
    except Exception as exc:  # anything a malformed file makes json, hex, eth-abi or eth-keys raise
        raise ArtifactError(f"{where}: not a proofs file ({type(exc).__name__}: {exc})") from None
    return tuple(proven)
