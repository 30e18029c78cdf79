"""ModelRegistry on py-evm: the relayer pattern, and every way a write must be refused."""

import hashlib

import pytest

from chain.compiler import compile_registry, load_artifact, resolve_solc
from chain.errors import ConfigError
from chain.identity import KIND_AGGREGATE, KIND_TEACHER, Attestation, Publication, recover, sign
from chain.provenance import uri_of
from chain.registry import Registry, RegistryError, checksummed

RUN = hashlib.sha256(b"run").digest()


def h(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def publication(d, signer, model_hash, *, nonce=None, deadline=None, kind=KIND_TEACHER):
    return Publication(
        node=signer.address,
        model_hash=model_hash,
        kind=kind,
        round=0,
        run_id=RUN,
        uri=uri_of(RUN),  # what kdledger runs register
        nonce=d.registry.nonce(signer.address) if nonce is None else nonce,
        deadline=d.registry.deadline() if deadline is None else deadline,
    )


def publish(d, signer, model_hash, **kw):
    pub = publication(d, signer, model_hash, **kw)
    return d.registry.register_teacher(pub, sign(signer, pub, d.registry.domain()), d.relayer)


def attestation(d, signer, model_hash, bps=9000):
    return Attestation(
        node=signer.address,
        model_hash=model_hash,
        run_id=RUN,
        accuracy_bps=bps,
        num_examples=100,
        nonce=d.registry.nonce(signer.address),
        deadline=d.registry.deadline(),
    )


def reverts(name):
    return pytest.raises(RegistryError, match=rf"^{name}\(")


def test_fresh_compile_reproduces_committed_artifact():
    try:
        solc = resolve_solc()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    fresh, committed = compile_registry(solc), load_artifact()
    assert fresh["abi"] == committed["abi"]
    assert fresh["bytecode"] == committed["bytecode"]


def test_a_model_registry_is_told_from_other_addresses(deployed):
    """ERC-5267's eip712Domain() with our name and version: an account without code, or a registry
    address given in lower case, are told apart (both backends)."""
    assert deployed.registry.is_model_registry()
    assert Registry(deployed.w3, deployed.registry.address.lower()).is_model_registry()
    assert not Registry(deployed.w3, deployed.outsider.address).is_model_registry()  # no code there


def test_addresses_are_normalised_or_refused_by_name():
    address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert checksummed(address.lower(), "--address") == address
    for bad in (address[:-1], "0x" + "zz" * 20, "", "5FbDB2315678afecb367f032d93F642f64180aa3" + "00"):
        with pytest.raises(ConfigError, match="--address .*not an Ethereum address"):
            checksummed(bad, "--address")


def test_signed_publication_is_recorded_and_emitted(deployed):
    d = deployed
    receipt = publish(d, d.node, h("teacher"))
    record = d.registry.model(h("teacher"))
    assert (record.owner, record.kind, record.block) == (d.node.address, KIND_TEACHER, receipt["blockNumber"])
    assert d.registry.nonce(d.node.address) == 1
    (event,) = d.registry.contract.events.TeacherRegistered().process_receipt(receipt)
    assert event["args"]["modelHash"] == h("teacher") and event["args"]["node"] == d.node.address
    assert receipt["gasUsed"] <= 90_000  # gas is deterministic: the budget for a registration


def test_python_recovers_the_signer_the_contract_recovers(deployed):
    d = deployed
    pub = publication(d, d.node, h("x"))
    assert recover(pub, d.registry.domain(), sign(d.node, pub, d.registry.domain())) == d.node.address


def test_signer_without_data_node_role_is_rejected(deployed):
    d = deployed
    with reverts("SignerLacksRole"):
        publish(d, d.outsider, h("rogue"))
    assert not d.registry.model(h("rogue")).registered


def test_replayed_signature_is_rejected(deployed):
    d = deployed
    pub = publication(d, d.node, h("once"))
    sig = sign(d.node, pub, d.registry.domain())
    d.registry.register_teacher(pub, sig, d.relayer)
    with reverts("InvalidAccountNonce"):
        d.registry.register_teacher(pub, sig, d.relayer)
    assert d.registry.nonce(d.node.address) == 1


def test_expired_deadline_is_rejected(deployed):
    d = deployed
    late = d.w3.eth.get_block("latest")["timestamp"] - 1
    with reverts("SignatureExpired"):
        publish(d, d.node, h("late"), deadline=late)
    assert not d.registry.model(h("late")).registered


def test_sender_without_relayer_role_is_rejected(deployed):
    d = deployed
    pub = publication(d, d.node, h("direct"))
    with reverts("AccessControlUnauthorizedAccount"):
        d.registry.register_teacher(pub, sign(d.node, pub, d.registry.domain()), d.outsider)
    assert not d.registry.model(h("direct")).registered


def test_signature_over_different_fields_is_rejected(deployed):
    d = deployed
    signed = publication(d, d.node, h("what was signed"))
    submitted = publication(d, d.node, h("what was submitted"))
    with reverts("InvalidSigner"):
        d.registry.register_teacher(submitted, sign(d.node, signed, d.registry.domain()), d.relayer)
    assert not d.registry.model(h("what was submitted")).registered


def test_a_hash_is_registered_once(deployed):
    d = deployed
    publish(d, d.node, h("dup"))
    with reverts("ModelAlreadyRegistered"):
        publish(d, d.other_node, h("dup"))
    assert d.registry.model(h("dup")).owner == d.node.address


def test_student_must_name_registered_teachers(deployed):
    d = deployed
    publish(d, d.node, h("t1"))
    with reverts("UnknownModel"):
        d.registry.commit_student(h("s"), RUN, [h("t1"), h("nobody")], "softtarget", h("cfg"), 10, "", d.distiller)
    assert not d.registry.model(h("s")).registered
    receipt = d.registry.commit_student(h("s"), RUN, [h("t1")], "softtarget", h("cfg"), 10, "", d.distiller)
    lineage = d.registry.lineage(h("s"))
    assert lineage.teacher_hashes == (h("t1"),) and lineage.method == "softtarget" and lineage.sample_count == 10
    assert receipt["status"] == 1


def test_only_a_distiller_commits_students(deployed):
    d = deployed
    publish(d, d.node, h("t"))
    with reverts("AccessControlUnauthorizedAccount"):
        d.registry.commit_student(h("s"), RUN, [h("t")], "noise", h("cfg"), 1, "", d.relayer)


def attest(d, signer, model_hash, path=(), bps=9000):
    att = attestation(d, signer, model_hash, bps=bps)
    return d.registry.attest(att, sign(signer, att, d.registry.domain()), d.relayer, path)


def test_attestation_only_from_a_data_node_and_once(deployed):
    d = deployed
    publish(d, d.node, h("m"))
    with reverts("SignerLacksRole"):
        attest(d, d.outsider, h("m"))
    attest(d, d.node, h("m"), bps=8123)  # its own teacher: the empty path
    assert d.registry.accuracy(h("m"), d.node.address)[:2] == (8123, 100)
    with reverts("AlreadyAttested"):
        attest(d, d.node, h("m"))
    with reverts("UnknownModel"):
        attest(d, d.node, h("never registered"))


def test_only_nodes_whose_data_went_into_a_model_attest_it(deployed):
    """A student of an aggregate of two nodes' teachers: each node proves its way down; another node,
    a wrong index or a path past the leaves is NotInLineage (on both backends)."""
    d = deployed
    publish(d, d.node, h("t0"))
    publish(d, d.other_node, h("t1"))
    with reverts("NotInLineage"):
        attest(d, d.other_node, h("t0"))  # another node's teacher
    d.registry.register_aggregate(h("agg"), RUN, 1, [h("t0"), h("t1")], "FedAvg", 900, "", d.relayer)
    d.registry.commit_student(h("s"), RUN, [h("agg")], "fast", h("cfg"), 5, "", d.distiller)
    for path in ([], [0], [0, 0], [0, 2], [0, 1, 0], [1, 1]):
        with reverts("NotInLineage"):
            attest(d, d.other_node, h("s"), path)
    attest(d, d.other_node, h("s"), [0, 1], bps=7777)
    attest(d, d.node, h("s"), [0, 0])
    attest(d, d.node, h("agg"), [0])
    assert d.registry.accuracy(h("s"), d.other_node.address)[:2] == (7777, 100)


def test_the_path_the_coordinator_finds_is_the_one_the_contract_accepts():
    from chain.registry import lineage_path

    sources = {h("s"): [h("agg")], h("agg"): [h("t0"), h("t1")]}
    assert lineage_path(h("s"), {h("t1")}, sources) == [0, 1]
    assert lineage_path(h("agg"), {h("t0")}, sources) == [0]
    assert lineage_path(h("t1"), {h("t1")}, sources) == []
    assert lineage_path(h("s"), {h("elsewhere")}, sources) is None


def test_aggregates_come_from_a_relayer_and_registered_sources(deployed):
    d = deployed
    publish(d, d.node, h("u1"))
    publish(d, d.other_node, h("u2"))
    with reverts("AccessControlUnauthorizedAccount"):
        d.registry.register_aggregate(h("agg"), RUN, 1, [h("u1"), h("u2")], "FedAvg", 900, "", d.distiller)
    with reverts("UnknownModel"):
        d.registry.register_aggregate(h("agg"), RUN, 1, [h("u1"), h("nope")], "FedAvg", 900, "", d.relayer)
    with reverts("EmptyLineage"):
        d.registry.register_aggregate(h("agg"), RUN, 1, [], "FedAvg", 900, "", d.relayer)
    assert not d.registry.model(h("agg")).registered
    d.registry.register_aggregate(h("agg"), RUN, 1, [h("u1"), h("u2")], "FedAvg", 900, "", d.relayer)
    record, lineage = d.registry.model(h("agg")), d.registry.lineage(h("agg"))
    assert (record.owner, record.kind, record.round) == (d.relayer.address, KIND_AGGREGATE, 1)
    assert lineage.teacher_hashes == (h("u1"), h("u2")) and lineage.method == "FedAvg" and lineage.sample_count == 900
    d.registry.commit_student(h("s"), RUN, [h("agg")], "genkd", h("cfg"), 5, "", d.distiller)  # a student of it
