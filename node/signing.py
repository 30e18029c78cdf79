"""OpenSSF model-signing bundles beside every file a run publishes, made by the party that publishes it.

The chain says "this hash was registered by this account". A Sigstore bundle (OpenSSF model signing, signed
with an elliptic-curve key, fully offline) says "this file is the one this key signed", in the format the ML
ecosystem's tools check: `model_signing verify key FILE --signature FILE.sig --public_key KEY.pub`.

The two are bound by the file itself: its safetensors `__metadata__` names the SHA-256 of the signing key's
DER SubjectPublicKeyInfo (`signing_key_sha256`), and the hash on-chain, which the party's account key signed
(EIP-712), covers that metadata. A key whose fingerprint a registered file names is therefore its registrant's.

Each party's P-256 signing key is derived from its account key (HKDF-SHA256 over the account's private key,
with a fixed label): a simulation stays reproducible, and a SuperNode with its own `key-file` needs nothing
new. Only public keys are written to the run directory (`public-keys/<address>.pub`, PEM); bundles lie beside
their files (`store/ab/cd/<hash>.safetensors.sig`).

This module imports neither torch nor model_signing at import time (the latter takes about a second): the CLI's
`verify` stays quick.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from chain.errors import ArtifactError
from chain.identity import write_private
from chain.safejson import bounded_json

SIGNING_KEY_LABEL = b"kdledger OpenSSF model-signing key v1"
METADATA_KEY = "signing_key_sha256"  # in a file's __metadata__ (node/artifacts.py, Metadata)
PUBLIC_KEYS = "public-keys"  # in a run directory: <address>.pub, one per party that signed a file
BUNDLE_SUFFIX = ".sig"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model_signing accepts
MAX_BUNDLE_BYTES = 1 << 20  # ours are about 2 kB
MAX_PUBLIC_KEY_BYTES = 1 << 14
MAX_HEADER_BYTES = 1 << 20  # as node/artifacts.py bounds a safetensors header


class SignatureRefused(ArtifactError):
    """A bundle that does not verify, or a key that is not bound to the file or its registrant."""


@functools.lru_cache(maxsize=64)
def derive_signing_key(account_key: bytes) -> ec.EllipticCurvePrivateKey:
    """The P-256 signing key of the party whose account (secp256k1) private key is `account_key`.

    HKDF-SHA256 with a fixed label gives 48 bytes, reduced into [1, n-1] (the extra 128 bits make the bias
    negligible, as FIPS 186-5 A.2.1): the same account always has the same signing key, and the signing key
    reveals nothing of the account key."""
    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=SIGNING_KEY_LABEL).derive(bytes(account_key))
    return ec.derive_private_key(int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the public key's DER SubjectPublicKeyInfo, in hex: what a file's metadata names."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def load_public_key(pem: bytes, where: str) -> ec.EllipticCurvePublicKey:
    """A PEM public key on a curve model_signing supports; SignatureRefused naming `where` otherwise."""
    if len(pem) > MAX_PUBLIC_KEY_BYTES:
        raise SignatureRefused(f"{where}: {len(pem)} bytes is not a public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise SignatureRefused(f"{where}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _SUPPORTED_CURVES:
        raise SignatureRefused(f"{where}: not an elliptic-curve key on P-256, P-384 or P-521")
    return key


def bundle_path(file: Path) -> Path:
    """Where a file's bundle lies: beside it, `<file>.sig` (a sealed file's is beside its plaintext's name)."""
    file = Path(file)
    name = file.name.removesuffix(".enc")
    return file.with_name(name + BUNDLE_SUFFIX)


def public_key_path(run_dir: Path, address: str) -> Path:
    return Path(run_dir) / PUBLIC_KEYS / f"{address}.pub"


def write_public_key(directory: Path, address: str, pem: bytes) -> Path:
    """Keep a party's public key as `<directory>/<address>.pub`; a party has one key per run."""
    path = Path(directory) / f"{address}.pub"
    if path.exists():
        if path.read_bytes() != pem:
            raise SignatureRefused(f"{address} presented another signing key than {path} holds")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    tmp.replace(path)
    return path


def sign_file(key: ec.EllipticCurvePrivateKey, file: Path, bundle: Path) -> None:
    """Write the OpenSSF model-signing bundle of `file` (signed by `key`) to `bundle`.

    model_signing reads the private key from a PEM file: it exists only inside a private temporary directory
    (0700, the key 0600) for the time of the call."""
    import model_signing.signing

    with tempfile.TemporaryDirectory(prefix="kdledger-sign-") as tmp:
        pem = Path(tmp) / "signing-key.pem"
        write_private(
            pem,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        model_signing.signing.Config().use_elliptic_key_signer(private_key=pem).sign(Path(file), Path(bundle))


def sign_blob(key: ec.EllipticCurvePrivateKey, blob: bytes, name: str = "model.safetensors") -> bytes:
    """The bundle of a file held in memory (a data node's file before it travels): the bundle's bytes."""
    with tempfile.TemporaryDirectory(prefix="kdledger-sign-") as tmp:
        file, bundle = Path(tmp) / name, Path(tmp) / (name + BUNDLE_SUFFIX)
        file.write_bytes(blob)
        sign_file(key, file, bundle)
        return bundle.read_bytes()


def declared_fingerprint(blob: bytes, where: str) -> str | None:
    """The signing-key fingerprint a safetensors file's metadata names (None if it names none), read within the
    same bounds as node/artifacts.py's header reader, without torch."""
    if len(blob) < 8:
        raise SignatureRefused(f"{where}: {len(blob)} bytes is not a safetensors file")
    size = int.from_bytes(blob[:8], "little")
    if size > MAX_HEADER_BYTES or 8 + size > len(blob):
        raise SignatureRefused(f"{where}: not a safetensors file (header of {size} bytes)")
    try:
        header = bounded_json(blob[8 : 8 + size], "safetensors header")
    except (ValueError, UnicodeDecodeError):
        raise SignatureRefused(f"{where}: not a safetensors file (its header is not JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    value = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class BundleCheck:
    """A bundle that verified: which key, which digest it signed, and the file's binding to that key."""

    bundle: str
    public_key: str
    key_sha256: str  # the public key's fingerprint, which the file's metadata names
    signed_sha256: str  # the digest the bundle's statement signed (the file's SHA-256)
    media_type: str

    def as_json(self) -> dict:
        return {
            "bundle": self.bundle,
            "public_key": self.public_key,
            "key_sha256": self.key_sha256,
            "signed_sha256": "0x" + self.signed_sha256,
            "media_type": self.media_type,
        }


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        if Path(path).stat().st_size > limit:
            raise SignatureRefused(f"{what} {path} is over {limit} bytes")
        return Path(path).read_bytes()
    except OSError as exc:
        raise SignatureRefused(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None


def verify_bundle(file: Path, bundle: Path, public_key: Path) -> BundleCheck:
    """Check that `bundle` is `public_key`'s OpenSSF model-signing signature over `file` (model_signing's own
    verifier), and that `file`'s metadata names that key; SignatureRefused, in one line, otherwise."""
    import model_signing.verifying

    raw = _read_limited(bundle, MAX_BUNDLE_BYTES, "bundle")
    try:
        document = bounded_json(raw, "bundle")
        media_type = str(document["mediaType"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise SignatureRefused(f"bundle {bundle} is not a Sigstore bundle") from None
    key = load_public_key(_read_limited(public_key, MAX_PUBLIC_KEY_BYTES, "public key"), f"public key {public_key}")
    key_id = fingerprint(key)
    blob = _read_limited(file, 1 << 40, "file")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints warnings; `kdledger verify --json` is stdout
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(file, bundle)
    except Exception as exc:  # noqa: BLE001 - model_signing's refusals are ValueError, InvalidSignature, KeyError...
        text = str(exc)
        if isinstance(exc, (KeyError, TypeError, AttributeError, IndexError)):
            reason = f"not a well-formed Sigstore bundle ({type(exc).__name__} {text[:80]})"
        elif text.startswith("Key mismatch"):
            reason = f"it was made by another key than {public_key} ({key_id[:16]}…)"
        elif text.startswith("Signature mismatch"):
            reason = f"{file} is not the file it signed (changed since it was signed)"
        elif type(exc).__name__ == "InvalidSignature":
            reason = f"its signature does not verify with {public_key} ({key_id[:16]}…)"
        else:
            reason = (text.splitlines() or [type(exc).__name__])[0][:200]
        raise SignatureRefused(f"bundle {bundle} refused: {reason}") from None
    declared = declared_fingerprint(blob, str(file))
    if declared is None:
        raise SignatureRefused(
            f"{file} names no signing key in its metadata ({METADATA_KEY}): nothing binds {public_key} to its "
            "registrant"
        )
    if declared != key_id:
        raise SignatureRefused(
            f"key {public_key} ({key_id[:16]}…) is not the key {file} names ({declared[:16]}…): it is not bound to "
            "the party that registered the file"
        )
    envelope = document.get("dsseEnvelope", {})
    statement = bounded_json(base64.b64decode(envelope["payload"]), "bundle statement")  # verified above
    signed = statement["predicate"]["resources"][0]["digest"]
    return BundleCheck(str(bundle), str(public_key), key_id, signed, media_type)


__all__ = [
    "METADATA_KEY",
    "PUBLIC_KEYS",
    "BundleCheck",
    "SignatureRefused",
    "bundle_path",
    "declared_fingerprint",
    "derive_signing_key",
    "fingerprint",
    "load_public_key",
    "public_key_path",
    "public_pem",
    "sign_blob",
    "sign_file",
    "verify_bundle",
    "write_public_key",
]
