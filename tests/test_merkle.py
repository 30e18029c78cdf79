"""Merkle roots of signed publications: the off-chain tree, the contract's checks, and every way a leaf is refused."""

import dataclasses
import hashlib
import json
import shutil

import pytest
import yaml
from conftest import ROOT, kdledger

from chain import provenance
from chain.errors import ArtifactError
from chain.identity import KIND_TEACHER, Domain, Publication, derive_account, sign
from chain.merkle import MerkleTree, ProvenLeaf, PublicationLeaf, read_proofs, verify, write_proofs
from chain.provenance import uri_of
from chain.registry import RegistryError
from tests.test_contract import RUN, attestation, h

KIND_BATCH = 6


def test_every_leaf_proves_its_inclusion_and_nothing_else_does():
    for n in range(1, 18):  # odd layers at every height
        leaves = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
        tree = MerkleTree(leaves)
        assert MerkleTree(list(reversed(leaves))).root == tree.root  # the nodes' reply order does not matter
        for leaf in leaves:
            proof = tree.proof(leaf)
            assert verify(proof, tree.root, leaf)
            assert not verify(proof, tree.root, hashlib.sha256(leaf).digest())  # a forged leaf
            if len(proof) > 1:
                assert not verify(list(reversed(proof)), tree.root, leaf)  # the proof's steps reordered
        outsider = hashlib.sha256(b"not a leaf").digest()
        with pytest.raises(KeyError):
            tree.proof(outsider)
    with pytest.raises(ValueError, match="differ"):
        MerkleTree([leaves[0], leaves[0]])


def signed_leaves(d, signers, round_=0):
    domain, deadline = d.registry.domain(), d.registry.deadline()
    leaves = []
    for i, s in enumerate(signers):
        pub = Publication(s.address, h(f"merkle {i} {s.address}"), KIND_TEACHER, round_, RUN, uri_of(RUN), 0, deadline)
        leaves.append(PublicationLeaf(pub, sign(s, pub, domain)))
    return leaves


def commit(d, leaves, tmp_path):
    root, path, _ = write_proofs(tmp_path, leaves)
    receipt = d.registry.commit_publications(root, RUN, 0, len(leaves), uri_of(RUN), d.relayer)
    return root, path, receipt


def included(d, root, proven):
    """Registry.publications_included (the root's record read, each leaf checked off-chain), asserted to agree
    with the contract's own publicationIncluded view on every leaf."""
    local = d.registry.publications_included(root, proven)
    on_chain = d.registry.read_many("publicationIncluded", [(root, leaf.as_struct(), list(p)) for leaf, p in proven])
    assert local == on_chain
    return local


def test_the_chain_and_the_proofs_file_agree_on_each_leaf_and_refuse_forgeries(deployed, tmp_path):
    d = deployed
    leaves = signed_leaves(d, [d.node, d.other_node, d.outsider])
    root, path, receipt = commit(d, leaves, tmp_path)
    (event,) = d.registry.contract.events.PublicationsCommitted().process_receipt(receipt)
    assert (event["args"]["root"], event["args"]["count"], event["args"]["relayer"]) == (root, 3, d.relayer.address)
    record = d.registry.model(root)
    assert (record.kind, record.owner) == (KIND_BATCH, d.relayer.address)
    proven = read_proofs(path, root, d.registry.domain())
    assert {p.publication.model_hash for p in proven} == {x.publication.model_hash for x in leaves}
    assert included(d, root, [(p.leaf, p.proof) for p in proven]) == [True] * 3

    good = next(p for p in proven if p.publication.node == d.node.address)
    deep = max(proven, key=lambda p: len(p.proof))  # two steps: reversed, they are another path
    forged = PublicationLeaf(
        Publication(**{**vars(good.publication), "model_hash": h("swapped weights")}), good.leaf.signature
    )
    resigned = PublicationLeaf(good.publication, sign(d.outsider, good.publication, d.registry.domain()))
    unsent = Publication(**{**vars(good.publication), "model_hash": h("never committed")})
    missing = PublicationLeaf(unsent, sign(d.node, unsent, d.registry.domain()))  # signed, never put in the tree
    assert (
        included(
            d,
            root,
            [
                (forged, good.proof),
                (deep.leaf, list(reversed(deep.proof))),
                (missing, good.proof),
                (resigned, good.proof),
            ],
        )
        == [False] * 4
    )
    assert included(d, h("no such root"), [(good.leaf, good.proof)]) == [False]

    doc = json.loads(path.read_text())
    doc["leaves"][1]["model_hash"] = "0x" + h("swapped weights").hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"leaf 1 .* is not in root"):
        read_proofs(path, root)
    with pytest.raises(ArtifactError, match=r"leaf 1 .* is not in root"):  # checked before: the edit is seen
        read_proofs(path, root, d.registry.domain())
    doc["leaves"].reverse()
    doc["leaves"][0]["proof"] = list(reversed(doc["leaves"][0]["proof"]))
    with pytest.raises(ArtifactError, match="is not in root"):
        read_proofs(path, root)


def test_a_root_is_committed_once_by_a_relayer_and_holds_something(deployed, tmp_path):
    d = deployed
    leaves = signed_leaves(d, [d.node])
    root, _, _ = write_proofs(tmp_path, leaves)
    with pytest.raises(RegistryError, match=r"^AccessControlUnauthorizedAccount\("):
        d.registry.commit_publications(root, RUN, 0, 1, "", d.outsider)
    with pytest.raises(RegistryError, match=r"^EmptyBatch\("):
        d.registry.commit_publications(root, RUN, 0, 0, "", d.relayer)
    d.registry.commit_publications(root, RUN, 0, 1, "", d.relayer)
    with pytest.raises(RegistryError, match=r"^ModelAlreadyRegistered\("):
        d.registry.commit_publications(root, RUN, 0, 1, "", d.relayer)


def test_a_node_attests_through_a_root_only_with_its_own_leaf(deployed, tmp_path):
    d = deployed
    leaves = signed_leaves(d, [d.node, d.other_node])
    root, path, _ = commit(d, leaves, tmp_path)
    d.registry.register_aggregate(h("ens of root"), RUN, 0, [root], "ensemble", 900, "", d.relayer)
    proven = {p.publication.node: p for p in read_proofs(path, root)}
    mine, theirs = proven[d.node.address], proven[d.other_node.address]

    def attest(signer, p):
        att = attestation(d, signer, h("ens of root"), 8100)
        sig = sign(signer, att, d.registry.domain())
        return d.registry.attest_batch_through_roots([att], [sig], [[0]], [p.leaf], [p.proof], d.relayer)

    with pytest.raises(RegistryError, match=r"^NotInLineage\("):  # another node's leaf
        attest(d.node, theirs)
    with pytest.raises(RegistryError, match=r"^NotInLineage\("):  # its own leaf, but the proof reordered
        attest(d.node, ProvenLeaf(mine.leaf, list(reversed(mine.proof)) + [h("extra")]))
    receipt = attest(d.node, mine)
    (event,) = d.registry.contract.events.AccuracyAttested().process_receipt(receipt)
    assert (event["args"]["node"], event["args"]["accuracyBps"]) == (d.node.address, 8100)
    assert d.registry.accuracy(h("ens of root"), d.node.address)[0] == 8100
    with pytest.raises(RegistryError, match=r"^NotInLineage\("):  # a root is no model to attest
        att = attestation(d, d.other_node, root, 7000)
        d.registry.attest_batch_through_roots(
            [att], [sign(d.other_node, att, d.registry.domain())], [[]], [theirs.leaf], [theirs.proof], d.relayer
        )
    with pytest.raises(RegistryError, match=r"^AccuracyOutOfRange\("):
        att = attestation(d, d.other_node, h("ens of root"), 10_001)
        d.registry.attest_batch_through_roots(
            [att], [sign(d.other_node, att, d.registry.domain())], [[0]], [theirs.leaf], [theirs.proof], d.relayer
        )
    with pytest.raises(RegistryError, match=r"^NotInLineage\("):  # the path must reach the root itself
        att = attestation(d, d.other_node, h("ens of root"), 7000)
        d.registry.attest_batch_through_roots(
            [att], [sign(d.other_node, att, d.registry.domain())], [[]], [theirs.leaf], [theirs.proof], d.relayer
        )


def test_a_leaf_proven_for_one_attestation_serves_the_next_of_its_node_only(deployed, tmp_path):
    """Attestations through the same root in a row prove the node's leaf once: the next one of the same node
    may carry it without a proof, another node may not pass it off as its own."""
    d = deployed
    root, path, _ = commit(d, signed_leaves(d, [d.node, d.other_node]), tmp_path)
    for name in ("student of root", "average of root", "ensemble of root"):
        d.registry.register_aggregate(h(name), RUN, 0, [root], name, 900, "", d.relayer)
    proven = {p.publication.node: p for p in read_proofs(path, root)}
    domain = d.registry.domain()

    def atts(signer, models):
        first = attestation(d, signer, h(models[0]), 8000)
        return [dataclasses.replace(first, model_hash=h(m), nonce=first.nonce + i) for i, m in enumerate(models)]

    mine = atts(d.node, ["student of root", "average of root"])
    sigs = [sign(d.node, a, domain) for a in mine]
    leaf = proven[d.node.address]
    with pytest.raises(RegistryError, match=r"^NotInLineage\("):  # the first of a run is always proven
        d.registry.attest_batch_through_roots(mine, sigs, [[0], [0]], [leaf.leaf] * 2, [[], []], d.relayer)
    receipt = d.registry.attest_batch_through_roots(
        mine, sigs, [[0], [0]], [leaf.leaf] * 2, [leaf.proof, []], d.relayer
    )
    assert len(d.registry.contract.events.AccuracyAttested().process_receipt(receipt)) == 2
    both = atts(d.node, ["ensemble of root"]) + atts(d.other_node, ["ensemble of root"])
    with pytest.raises(RegistryError, match=r"^NotInLineage\("):  # the leaf just proven is not the other node's
        d.registry.attest_batch_through_roots(
            both,
            [sign(d.node, both[0], domain), sign(d.other_node, both[1], domain)],
            [[0], [0]],
            [leaf.leaf] * 2,
            [leaf.proof, []],
            d.relayer,
        )


def test_what_kdledger_sends_is_web3s_calldata_byte_for_byte(deployed, tmp_path):
    """send and read_many encode with eth-abi directly: every shape the contract takes (tuples, arrays of
    tuples, nested arrays, strings) comes out as web3's own encoder makes it."""
    from chain.registry import _batched_attestations, calldata

    d = deployed
    root, path, _ = commit(d, signed_leaves(d, [d.node, d.other_node]), tmp_path)
    proven = read_proofs(path, root)
    att = attestation(d, d.node, h("a model"), 8100)
    calls = {
        "attestBatchThroughRoots": [
            RUN,
            att.deadline,
            _batched_attestations([att], [sign(d.node, att, d.registry.domain())]),
            [[0, 2]],
            [p.leaf.as_struct() for p in proven],
            [proven[0].proof, []],
        ],
        "commitPublications": [root, RUN, 0, 2, uri_of(RUN)],
        "publicationIncluded": [root, proven[1].leaf.as_struct(), proven[1].proof],
        "nonces": [d.node.address],
    }
    for name, args in calls.items():
        fn = d.registry.contract.functions[name](*args)
        assert calldata(fn.abi, fn.args) == bytes.fromhex(d.registry.contract.encode_abi(name, args)[2:]), name


def test_a_root_of_1000_publications_costs_under_2000_gas_a_record(tmp_path):
    """Gas is deterministic: the commit of one root of 1 000 signed publications, amortised per record."""
    from chain.backends import connect
    from chain.registry import Registry, fund

    w3 = connect()
    admin, relayer = derive_account(3, "admin"), derive_account(3, "relayer")
    fund(w3, [admin.address, relayer.address])
    registry, _ = Registry.deploy(w3, admin)
    registry.grant("RELAYER", relayer.address, admin)
    leaves = []
    for i in range(1000):  # signatures are checked by readers, so any well-formed one serves for the gas
        pub = Publication(derive_account(3, f"node-{i}").address, h(f"t{i}"), KIND_TEACHER, 0, RUN, uri_of(RUN), 0, 1)
        leaves.append(PublicationLeaf(pub, bytes(31) + b"\x01" + bytes(31) + b"\x01\x1b"))
    root, _, _ = write_proofs(tmp_path, leaves)
    for count in (100, 1000):
        receipt = registry.commit_publications(root if count == 1000 else h("100"), RUN, 0, count, uri_of(RUN), relayer)
        assert receipt["gasUsed"] / count <= 2_000


@pytest.fixture(scope="module")
def merkle_run(tmp_path_factory):
    """A reduced quickstart whose 3 teachers go in Merkle roots of at most 2 leaves (so 2 roots)."""
    tmp = tmp_path_factory.mktemp("merkle")
    spec = yaml.safe_load((ROOT / "simulations/scenarios/quickstart.yaml").read_text())
    spec.update(name="merkle-ci", nodes=3)
    spec["teacher"]["epochs"] = 2
    spec["distill"].update(samples=256, steps=50, batch_size=64)
    spec["distill"]["options"].update(iterations=5)
    spec["chain"] = {"merkle_leaves": 2}
    (tmp / "merkle.yaml").write_text(yaml.safe_dump(spec))
    done = kdledger("run", str(tmp / "merkle.yaml"), "--out", str(tmp / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "run"


def _events(run_dir):
    by_name: dict[str, list] = {}
    for e in json.loads((run_dir / "events.json").read_text()):
        by_name.setdefault(e["event"], []).append(e)
    return by_name


def test_a_merkle_run_commits_roots_names_them_as_lineage_and_attests_through_them(merkle_run):
    events = _events(merkle_run)
    assert "TeacherRegistered" not in events
    roots = {e["args"]["root"]: e["args"]["count"] for e in events["PublicationsCommitted"]}
    assert sorted(roots.values()) == [1, 2]
    assert set(roots) == {p.stem for p in (merkle_run / "merkle").glob("*.json")}
    (student,) = events["StudentCommitted"]
    assert set(student["args"]["teacherHashes"]) == set(roots)
    for aggregate in events["AggregateRegistered"]:
        assert set(aggregate["args"]["sourceHashes"]) == set(roots)
    # each node attests the student, the ensemble and FedAvg once; its own teacher is no on-chain record here
    attested = {(e["args"]["node"], e["args"]["modelHash"]) for e in events["AccuracyAttested"]}
    nodes = {
        leaf["node"]
        for root in roots
        for leaf in json.loads((merkle_run / "merkle" / f"{root}.json").read_text())["leaves"]
    }
    assert len(nodes) == 3 and len(attested) == 9 and {n for n, _ in attested} == nodes
    metrics = json.loads((merkle_run / "metrics.json").read_text())
    assert all(n["teacher_accuracy"] is None and n["student_accuracy"] is not None for n in metrics["nodes"])


def test_verify_and_lineage_prove_each_teacher_from_its_proofs_file(merkle_run):
    leaves = [
        leaf for path in (merkle_run / "merkle").glob("*.json") for leaf in json.loads(path.read_text())["leaves"]
    ]
    files = [
        merkle_run
        / "store"
        / leaf["model_hash"][2:4]
        / leaf["model_hash"][4:6]
        / f"{leaf['model_hash'][2:]}.safetensors"
        for leaf in leaves
    ]
    done = kdledger("verify", "--run", str(merkle_run), *map(str, files))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("proven in merkle root") == 3
    student = json.loads((merkle_run / "metrics.json").read_text())["student_hash"]
    tree = kdledger("lineage", student, "--run", str(merkle_run), "--json")
    (t,) = json.loads(tree.stdout)
    below = [leaf for root in t["teachers"] for leaf in root["teachers"]]
    assert {x["model_hash"] for x in below} == {leaf["model_hash"] for leaf in leaves}
    assert {x["owner"] for x in below} == {leaf["node"] for leaf in leaves}


@pytest.mark.parametrize("tamper", ["forged", "reordered", "missing", "resigned"])
def test_a_tampered_proofs_file_is_refused_in_one_line(merkle_run, tmp_path, tamper):
    copy = tmp_path / "run"
    shutil.copytree(merkle_run, copy)
    path = next(p for p in (copy / "merkle").glob("*.json") if json.loads(p.read_text())["count"] == 2)
    doc = json.loads(path.read_text())
    first = doc["leaves"][0]
    if tamper == "forged":
        first["model_hash"] = "0x" + h("other weights").hex()
    elif tamper == "reordered":
        first["proof"] = list(reversed(first["proof"])) + ["0x" + h("step").hex()]
    elif tamper == "missing":
        doc["leaves"] = doc["leaves"][1:]
    else:  # a well-formed signature by another key
        other = derive_account(99, "someone")
        pub = Publication(
            first["node"],
            bytes.fromhex(first["model_hash"][2:]),
            first["kind"],
            first["round"],
            bytes.fromhex(first["run_id"][2:]),
            first["uri"],
            first["nonce"],
            first["deadline"],
        )
        chain = json.loads((copy / "chain.json").read_text())
        first["signature"] = "0x" + sign(other, pub, Domain(chain["chain_id"], chain["contract"])).hex()
    path.write_text(json.dumps(doc))
    teacher = doc["leaves"][-1]["model_hash"]
    target = copy / "store" / teacher[2:4] / teacher[4:6] / f"{teacher[2:]}.safetensors"
    done = kdledger("verify", "--run", str(copy), str(target))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert str(path) in done.stderr


def test_the_explorer_draws_a_merkle_students_data_nodes_from_the_proofs(merkle_run):
    from simulations.explore.app import model_view, student_view
    from simulations.explore.server import load_sources

    (source,) = load_sources([merkle_run], None, None)
    student = json.loads((merkle_run / "metrics.json").read_text())["student_hash"]
    view = student_view(source, provenance.find(source.events, student, **source.proofs))
    kinds = [n["kind"] for n in view["graph"]["nodes"]]
    assert kinds.count("merkle-root") == 2 and kinds.count("teacher") == 3 and kinds.count("data node") == 3
    leaf = json.loads(next((merkle_run / "merkle").glob("*.json")).read_text())["leaves"][0]
    teacher = model_view(source, leaf["model_hash"])
    assert (teacher["kind"], teacher["owner"]) == ("teacher", leaf["node"])
    assert teacher["merkle_root"] in {"0x" + p.stem[2:] for p in (merkle_run / "merkle").glob("*.json")}
    assert teacher["students"] == [student]


def test_a_leaf_must_be_signed_and_of_the_attestations_run_to_attest_through(deployed, tmp_path):
    """The chain checks the leaf again when its node attests: a root the relayer filled with a leaf the node
    never signed, or with its publication of another run, does not let the node's attestation through."""
    d = deployed
    other_run = Publication(d.node.address, h("of another run"), KIND_TEACHER, 0, h("run 2"), uri_of(RUN), 0, 1)
    unsigned = Publication(d.other_node.address, h("not signed by it"), KIND_TEACHER, 0, RUN, uri_of(RUN), 0, 1)
    leaves = [
        PublicationLeaf(other_run, sign(d.node, other_run, d.registry.domain())),
        PublicationLeaf(unsigned, sign(d.outsider, unsigned, d.registry.domain())),
    ]
    root, path, proven = write_proofs(tmp_path, leaves)
    d.registry.commit_publications(root, RUN, 0, 2, uri_of(RUN), d.relayer)
    d.registry.register_aggregate(h("ens of a bad root"), RUN, 0, [root], "ensemble", 900, "", d.relayer)
    for signer, p in zip((d.node, d.other_node), proven):
        att = attestation(d, signer, h("ens of a bad root"), 8000)
        with pytest.raises(RegistryError, match=r"^NotInLineage\("):
            d.registry.attest_batch_through_roots(
                [att], [sign(signer, att, d.registry.domain())], [[0]], [p.leaf], [p.proof], d.relayer
            )
    with pytest.raises(ArtifactError, match="is not signed by its node"):
        read_proofs(path, root, d.registry.domain())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda doc: doc["leaves"].__setitem__(2, doc["leaves"][0]), "not the tree of root"),  # one repeated
        (lambda doc: doc["leaves"][0].__setitem__("round", -1), "not a proofs file"),
        (lambda doc: doc["leaves"][0].__setitem__("node", "xyz"), "not a proofs file"),
        (lambda doc: doc["leaves"][0].__setitem__("model_hash", "0x" + "ab" * 31), "not a proofs file"),
        (lambda doc: doc["leaves"][0].__setitem__("kind", 4), "not 1 to 3|not in root"),
        (lambda doc: doc.__setitem__("leaves", 7), "not a proofs file"),
    ],
)
def test_a_malformed_proofs_file_is_an_artifact_error(tmp_path, edit, message):
    signers = [derive_account(5, f"n{i}") for i in range(3)]
    domain = Domain(1, "0x" + "11" * 20)
    leaves = []
    for i, s in enumerate(signers):
        pub = Publication(s.address, h(f"m{i}"), KIND_TEACHER, 0, RUN, uri_of(RUN), 0, 1)
        leaves.append(PublicationLeaf(pub, sign(s, pub, domain)))
    root, path, _ = write_proofs(tmp_path, leaves)
    assert len(read_proofs(path, root, domain)) == 3
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=message):
        read_proofs(path, root, domain)


def test_the_coordinator_keeps_only_well_formed_signatures_of_the_node_itself():
    from node.relay import SignedPublication
    from node.server_app import NodeRecord, _signed_by

    node, other = derive_account(5, "node"), derive_account(5, "other")
    domain = Domain(1, "0x" + "11" * 20)
    pub = Publication(node.address, h("t"), KIND_TEACHER, 0, RUN, uri_of(RUN), 0, 1)
    record = NodeRecord(0, 0, node.address)

    def item(signature):
        return SignedPublication(record, "teacher", pub, signature)

    assert _signed_by(item(sign(node, pub, domain)), domain)
    assert not _signed_by(item(sign(other, pub, domain)), domain)
    assert not _signed_by(item(bytes(65)), domain)  # eth-keys refuses it outright
    good = sign(node, pub, domain)
    assert not _signed_by(item(good[:64] + bytes([good[64] - 27])), domain)  # v 0/1: no leaf carries it


def test_a_run_where_no_model_was_measured_still_gets_its_chart(tmp_path):
    """Every node failed in evaluate (as a Merkle run on an RPC chain once made them): the report's chart is
    drawn empty, not a crash that loses the run directory."""
    from simulations.plots import accuracy_bars

    rows = [{"partition": 0, "node": "0x" + "ab" * 20, "student_accuracy": None}]
    accuracy_bars(rows, [], tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 0
