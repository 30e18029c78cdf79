"""What the coordinator relays to ModelRegistry for the data nodes: their signed records, in batches.

A phase's records (the nodes' publications of a round, or their attestations) go `batch_size` per
transaction (`registerTeachers`, `attestBatch`), each signature still checked on-chain. A batch the
contract refuses is sent again record by record, so that only the node whose record is refused drops
out, with the contract's own reason; its later records are not sent (their nonces follow it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from eth_account.signers.local import LocalAccount

from chain.identity import Attestation, Publication
from chain.merkle import ProvenLeaf
from chain.registry import Registry, RegistryError

if TYPE_CHECKING:
    from node.server_app import NodeRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignedPublication:
    """A checked and stored file of a node, and the node's signature over its publication."""

    phase: ClassVar[str] = "register"
    record: NodeRecord
    kind: str
    publication: Publication
    signature: bytes

    def batch_key(self) -> tuple:
        """The fields a registerTeachers batch carries once."""
        p = self.publication
        return p.run_id, p.round, p.uri, p.deadline

    @staticmethod
    def send(registry: Registry, batch: Sequence[SignedPublication], relayer: LocalAccount) -> Any:
        pubs, sigs = [i.publication for i in batch], [i.signature for i in batch]
        if len(batch) == 1:
            return registry.register_teacher(pubs[0], sigs[0], relayer)
        return registry.register_teachers(pubs, sigs, relayer)


@dataclass(frozen=True)
class SignedAttestation:
    """What a node measured and signed, with the lineage path the contract checks."""

    phase: ClassVar[str] = "attest"
    record: NodeRecord
    attestation: Attestation
    signature: bytes
    path: list[int]
    leaf: ProvenLeaf | None = None  # the node's publication in the root the path reaches, if it reaches one

    def batch_key(self) -> tuple:
        """The fields an attestBatch batch carries once, and which call it is."""
        return self.attestation.run_id, self.attestation.deadline, self.leaf is None

    @staticmethod
    def send(registry: Registry, batch: Sequence[SignedAttestation], relayer: LocalAccount) -> Any:
        atts, sigs, paths = [i.attestation for i in batch], [i.signature for i in batch], [i.path for i in batch]
        proven = [i.leaf for i in batch if i.leaf is not None]
        if proven:
            leaves, proofs = [p.leaf for p in proven], [p.proof for p in proven]
            return registry.attest_batch_through_roots(atts, sigs, paths, leaves, proofs, relayer)
        if len(batch) == 1:
            return registry.attest(atts[0], sigs[0], relayer, paths[0])
        return registry.attest_batch(atts, sigs, paths, relayer)


Signed = TypeVar("Signed", SignedPublication, SignedAttestation)


def relay(
    registry: Registry, relayer: LocalAccount, items: Sequence[Signed], batch_size: int
) -> list[tuple[Signed, Any, int]]:
    """Send `items` in order, in batches of at most `batch_size` that share their batch key; a node whose
    record the contract refuses is marked failed. Each item that landed, its receipt and its batch's size."""
    batches: list[list[Signed]] = []
    for item in items:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].batch_key() == item.batch_key():
            batches[-1].append(item)
        else:
            batches.append([item])
    landed: list[tuple[Signed, Any, int]] = []
    for batch in batches:
        live = [i for i in batch if i.record.error is None]
        if not live:
            continue
        try:
            receipt = type(live[0]).send(registry, live, relayer)
        except (RegistryError, ValueError) as exc:  # ValueError: a malformed signature, before anything is sent
            if len(live) == 1:
                live[0].record.error = f"{live[0].phase}: {exc}"
                log.warning("node %s: %s", live[0].record.address, live[0].record.error)
            else:
                for item in live:
                    landed += relay(registry, relayer, [item], 1)
            continue
        landed += [(item, receipt, len(live)) for item in live]
    return landed
