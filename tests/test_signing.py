"""OpenSSF model-signing bundles (node/signing.py): keys derived from account keys, bundles any tool verifies,
and the binding of the signing key to the file's registrant through the file's own metadata.

The same checks on a real run's files (the student, the teachers, the aggregates, `kdledger verify` and the
standard `model_signing verify key` CLI) are in tests/test_end_to_end.py, on the run it already makes.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from chain.identity import derive_account
from node.artifacts import Expected, deserialize, read_header, serialize, sha256
from node.models import build_model
from node.signing import (
    SignatureRefused,
    bundle_path,
    declared_fingerprint,
    derive_signing_key,
    fingerprint,
    load_public_key,
    public_pem,
    sign_blob,
    sign_file,
    verify_bundle,
    write_public_key,
)

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")
SHAPE = (1, 8, 8)
ALICE, BOB = derive_account(0, "node-0"), derive_account(0, "node-1")


def signed_file(tmp_path: Path, account=ALICE, name: str = "teacher.safetensors") -> tuple[Path, Path, Path]:
    """A model file naming `account`'s signing key, its bundle beside it and the public key: what a run writes."""
    key = derive_signing_key(bytes(account.key))
    blob = serialize(build_model("digits-cnn", SHAPE, 10), "digits-cnn", SHAPE, 10, signing_key=fingerprint(key))
    file = tmp_path / name
    file.write_bytes(blob)
    bundle_path(file).write_bytes(sign_blob(key, blob))
    pub = write_public_key(tmp_path / "public-keys", account.address, public_pem(key))
    return file, bundle_path(file), pub


def test_the_signing_key_is_derived_from_the_account_key_alone():
    """Reproducible (a simulation's hashes stay the same), one per account, on P-256, and not the account key."""
    a, again, b = (derive_signing_key(bytes(acct.key)) for acct in (ALICE, derive_account(0, "node-0"), BOB))
    assert isinstance(a.curve, ec.SECP256R1)
    assert a.private_numbers().private_value == again.private_numbers().private_value
    assert fingerprint(a) == fingerprint(again) != fingerprint(b)
    assert a.private_numbers().private_value != int.from_bytes(bytes(ALICE.key), "big")
    assert len(fingerprint(a)) == 64 and fingerprint(a) == fingerprint(a.public_key())


def test_the_files_metadata_names_its_signing_key_under_the_hash(tmp_path):
    file, _, pub = signed_file(tmp_path)
    blob = file.read_bytes()
    meta, _ = read_header(blob)
    assert meta.signing_key_sha256 == fingerprint(load_public_key(pub.read_bytes(), "key"))
    assert declared_fingerprint(blob, "f") == meta.signing_key_sha256
    # it is part of the bytes the chain's hash covers: another key, another hash; and the file still loads
    other = serialize(build_model("digits-cnn", SHAPE, 10), "digits-cnn", SHAPE, 10, signing_key="ab" * 32)
    assert sha256(other) != sha256(blob)
    assert deserialize(blob, sha256(blob), Expected(("digits-cnn",), SHAPE, 10)) is not None
    unsigned = serialize(build_model("digits-cnn", SHAPE, 10), "digits-cnn", SHAPE, 10)
    assert declared_fingerprint(unsigned, "f") is None and read_header(unsigned)[0].signing_key_sha256 is None


def test_a_bundle_verifies_with_kdledger_the_model_signing_api_and_its_cli(tmp_path):
    import model_signing.verifying

    file, bundle, pub = signed_file(tmp_path)
    check = verify_bundle(file, bundle, pub)
    assert check.signed_sha256 == sha256(file.read_bytes()).hex()
    assert check.media_type == "application/vnd.dev.sigstore.bundle.v0.3+json"
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(file, bundle)
    done = subprocess.run(
        [str(MODEL_SIGNING), "verify", "key", str(file), "--signature", str(bundle), "--public_key", str(pub)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "Verification succeeded" in done.stdout + done.stderr
    # the bundle signs the file's bytes, not its name: a copy under another name verifies too
    copy = tmp_path / "copy" / "student.safetensors"
    copy.parent.mkdir()
    copy.write_bytes(file.read_bytes())
    assert verify_bundle(copy, bundle, pub).key_sha256 == check.key_sha256


def test_a_tampered_file_is_refused(tmp_path):
    file, bundle, pub = signed_file(tmp_path)
    blob = file.read_bytes()
    file.write_bytes(blob[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(SignatureRefused, match="is not the file it signed"):
        verify_bundle(file, bundle, pub)
    done = subprocess.run(
        [str(MODEL_SIGNING), "verify", "key", str(file), "--signature", str(bundle), "--public_key", str(pub)],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0


def test_a_bundle_made_by_another_key_is_refused(tmp_path):
    file, bundle, pub = signed_file(tmp_path)
    bundle.write_bytes(sign_blob(derive_signing_key(bytes(BOB.key)), file.read_bytes()))
    with pytest.raises(SignatureRefused, match="made by another key"):
        verify_bundle(file, bundle, pub)


def test_a_key_not_bound_to_the_file_is_refused_even_with_its_own_valid_bundle(tmp_path):
    """Bob's key and a bundle Bob really made over Alice's file: the signature is good, but Alice's file names
    Alice's key, and the chain's hash of it (signed by Alice) says so; Bob's key is not bound to it."""
    file, _, _ = signed_file(tmp_path)
    bob = derive_signing_key(bytes(BOB.key))
    bob_pub = write_public_key(tmp_path / "public-keys", BOB.address, public_pem(bob))
    bob_bundle = tmp_path / "bob.sig"
    sign_file(bob, file, bob_bundle)
    with pytest.raises(SignatureRefused, match="is not the key .* names .*not bound to the party that registered"):
        verify_bundle(file, bob_bundle, bob_pub)
    # and a file that names no key binds none
    unsigned = tmp_path / "unsigned.safetensors"
    unsigned.write_bytes(serialize(build_model("digits-cnn", SHAPE, 10), "digits-cnn", SHAPE, 10))
    sign_file(bob, unsigned, bundle_path(unsigned))
    with pytest.raises(SignatureRefused, match="names no signing key"):
        verify_bundle(unsigned, bundle_path(unsigned), bob_pub)


@pytest.mark.parametrize(
    "bundle_bytes, match",
    [
        (b"not json", "not a Sigstore bundle"),
        (b"[" * 100_000 + b"]" * 100_000, "not a Sigstore bundle"),  # nested: refused before any parser recurses
        (b'{"mediaType": "x"}', "refused"),
        (b"{" + b" " * (1 << 20) + b"}", "over"),
    ],
    ids=["not json", "nested 100 000 deep", "no envelope", "over a MiB"],
)
def test_a_hostile_bundle_is_one_clear_refusal(tmp_path, bundle_bytes, match):
    file, bundle, pub = signed_file(tmp_path)
    bundle.write_bytes(bundle_bytes)
    with pytest.raises(SignatureRefused, match=match):
        verify_bundle(file, bundle, pub)


def test_a_public_key_that_is_not_one_is_refused(tmp_path):
    file, bundle, pub = signed_file(tmp_path)
    pub.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SignatureRefused, match="not a PEM public key"):
        verify_bundle(file, bundle, pub)
    with pytest.raises(SignatureRefused, match="cannot read public key"):
        verify_bundle(file, bundle, tmp_path / "absent.pub")


def test_a_party_keeps_one_public_key_per_run(tmp_path):
    alice = public_pem(derive_signing_key(bytes(ALICE.key)))
    path = write_public_key(tmp_path, ALICE.address, alice)
    assert write_public_key(tmp_path, ALICE.address, alice) == path
    with pytest.raises(SignatureRefused, match="another signing key"):
        write_public_key(tmp_path, ALICE.address, public_pem(derive_signing_key(bytes(BOB.key))))


def test_a_sealed_files_bundle_lies_beside_its_plaintexts_name(tmp_path):
    assert bundle_path(tmp_path / "ab.safetensors") == tmp_path / "ab.safetensors.sig"
    assert bundle_path(tmp_path / "ab.safetensors.enc") == tmp_path / "ab.safetensors.sig"


def test_the_coordinator_refuses_a_nodes_bundle_that_does_not_verify(tmp_path):
    """The coordinator checks each node's bundle against the file it rebuilt before relaying the node's
    signature; a bundle by another key is an ArtifactError (the node drops out) and is not kept."""
    from chain.errors import ArtifactError
    from node.artifacts import ArtifactStore
    from node.config import DataConfig, DistillConfig, TeacherConfig
    from node.server_app import Coordinator

    relayer, distiller = derive_account(0, "relayer"), derive_account(0, "distiller")
    store = ArtifactStore(tmp_path / "run" / "store")
    configs = DataConfig(), TeacherConfig(), DistillConfig()
    c = Coordinator(None, relayer, distiller, store, b"\0" * 32, {}, 0, 2, *configs, tmp_path / "run" / "keys")
    file, bundle, pub = signed_file(tmp_path)
    model_hash = store.put(file.read_bytes())
    alice_pem = pub.read_bytes()
    c.keep_node_bundle(ALICE.address, alice_pem, model_hash, bundle.read_bytes(), sealed=False)
    kept = bundle_path(store.path(model_hash))
    assert kept.read_bytes() == bundle.read_bytes()
    assert (tmp_path / "run" / "public-keys" / f"{ALICE.address}.pub").read_bytes() == alice_pem
    kept.unlink()
    by_bob = sign_blob(derive_signing_key(bytes(BOB.key)), file.read_bytes())
    with pytest.raises(ArtifactError, match="made by another key"):
        c.keep_node_bundle(ALICE.address, alice_pem, model_hash, by_bob, sealed=False)
    assert not kept.exists()
    with pytest.raises(ArtifactError, match="another signing key"):  # a node has one key in a run
        c.keep_node_bundle(ALICE.address, public_pem(derive_signing_key(bytes(BOB.key))), model_hash, by_bob, False)


def test_verify_does_not_import_torch():
    """`kdledger verify` reads JSON, the chain and bundles: it starts in a second or two, not in torch's seven."""
    probe = (
        "import sys, simulations.cli as c, node.signing as s, model_signing.verifying; print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
