"""Signed checkpoints of the audit chain, the witness that keeps them, and how a chain is judged
against them. Shared by the audit service (signs, writes, verifies) and the CLI (verifies an
export offline), so it lives here and imports nothing of either.

A checkpoint says "the log had `sequence` records ending in `head_hash`; this append extended
the head (`base_sequence`, `base_hash`)". The audit service signs one with its own Ed25519 key
for every append transaction, and writes it to the witness *before* the transaction commits,
while it holds the chain lock: the witness's order is the chain's order, and no record the
service committed is without a checkpoint. A record without one was written by someone else.

The witness is append-only storage the database's owner cannot rewrite. The default is a file
(`checkpoints.jsonl`, one signed checkpoint per line) in a directory of its own; production
deployments make it immutable (`chattr +a`, another host's volume, a WORM bucket or another
service) by implementing `Witness` and listing it in WITNESS_KINDS.

Line format: {"checkpoint": {...body...}, "key_id": "<16 hex>", "signature": "<base64>"}, where
the signature is Ed25519 over the body as JSON with sorted keys and no whitespace (UTF-8).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CHECKPOINT_FILE = "checkpoints.jsonl"
MAX_LINE = 4096  # a checkpoint line is ~400 bytes; anything longer is not one of ours

# Verdicts (the names match the VerifyFailure enum without its prefix, lowercase).
TRUNCATED, REWRITTEN, FORGED_APPEND, CHECKPOINT_MISSING = (
    "truncated",
    "rewritten",
    "forged_append",
    "checkpoint_missing",
)


class WitnessError(Exception):
    """The witness cannot be read or written."""


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    head_hash: str
    base_sequence: int  # the head this append extended
    base_hash: str
    time: str  # RFC 3339 UTC
    # True for the first checkpoint of a log that had records before it had a witness.
    adopted: bool = False

    def signed_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    key_id: str
    signature: str  # base64

    def to_line(self) -> str:
        body = {"checkpoint": asdict(self.checkpoint), "key_id": self.key_id, "signature": self.signature}
        return json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str) -> SignedCheckpoint:
        """Raises ValueError when the line is not a checkpoint."""
        doc = json.loads(line)
        c = doc["checkpoint"]
        cp = Checkpoint(
            sequence=int(c["sequence"]),
            head_hash=str(c["head_hash"]),
            base_sequence=int(c["base_sequence"]),
            base_hash=str(c["base_hash"]),
            time=str(c["time"]),
            adopted=bool(c.get("adopted", False)),
        )
        return cls(cp, str(doc["key_id"]), str(doc["signature"]))


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise WitnessError(f"cannot read the checkpoint public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise WitnessError(f"{path} is not an Ed25519 public key")
    return key


def signature_ok(public_key: Ed25519PublicKey, signed: SignedCheckpoint) -> bool:
    try:
        public_key.verify(base64.b64decode(signed.signature, validate=True), signed.checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


class CheckpointSigner:
    """The audit service's signing key: created on first start (mode 0600), its public half
    written beside it as `<key>.pub` for offline verifiers."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def load_or_create(cls, path: str | Path) -> CheckpointSigner:
        p = Path(path)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another replica made it first
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
        try:
            key = serialization.load_pem_private_key(p.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise WitnessError(f"cannot read the checkpoint signing key {p}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise WitnessError(f"{p} is not an Ed25519 private key")
        signer = cls(key)
        pub = p.with_name(p.name + ".pub")
        if not pub.exists() or pub.read_bytes() != public_pem(signer.public_key):
            pub.write_bytes(public_pem(signer.public_key))
        return signer

    def sign(self, checkpoint: Checkpoint) -> SignedCheckpoint:
        sig = base64.b64encode(self._key.sign(checkpoint.signed_bytes())).decode()
        return SignedCheckpoint(checkpoint, self.key_id, sig)


class Witness(ABC):
    """Append-only storage of signed checkpoints, outside the audit database."""

    url: str

    @abstractmethod
    def append(self, signed: SignedCheckpoint) -> None:
        """Durably appends one checkpoint (raises WitnessError)."""

    @abstractmethod
    def latest(self) -> SignedCheckpoint | None:
        """The last checkpoint, or None when there is none (raises WitnessError if unreadable)."""

    @abstractmethod
    def mark(self) -> int:
        """An opaque position: entries(mark) stops there (a verifier reads what existed then)."""

    @abstractmethod
    def entries(self, until: int | None = None) -> Iterator[SignedCheckpoint]:
        """Every checkpoint oldest first, up to `until` (raises WitnessError on a bad entry)."""


class FileWitness(Witness):
    """Checkpoints as lines of `<directory>/checkpoints.jsonl`, appended with O_APPEND and fsync."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / CHECKPOINT_FILE
        self.url = f"file://{self.dir.resolve()}"

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def append(self, signed: SignedCheckpoint) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, signed.to_line().encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise WitnessError(f"cannot write the audit witness {self.path}: {exc}") from None

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise WitnessError(f"cannot read the audit witness {self.path}: {exc}") from None

    def latest(self) -> SignedCheckpoint | None:
        size = self.mark()
        if size == 0:
            return None
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, size - MAX_LINE))
                tail = f.read(MAX_LINE)
        except OSError as exc:
            raise WitnessError(f"cannot read the audit witness {self.path}: {exc}") from None
        lines = tail.rstrip(b"\n").split(b"\n")
        return _parse(lines[-1], f"{self.path}, last line")

    def entries(self, until: int | None = None) -> Iterator[SignedCheckpoint]:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise WitnessError(f"cannot read the audit witness {self.path}: {exc}") from None
        with f:
            read = 0
            for n, line in enumerate(f, start=1):
                read += len(line)
                if until is not None and read > until:
                    return
                yield _parse(line, f"{self.path}, line {n}")


def _parse(line: bytes, where: str) -> SignedCheckpoint:
    if len(line) > MAX_LINE:
        raise WitnessError(f"{where} is not a checkpoint (longer than {MAX_LINE} bytes)")
    try:
        return SignedCheckpoint.from_line(line.decode())
    except (ValueError, KeyError, TypeError) as exc:
        raise WitnessError(f"{where} is not a checkpoint ({exc})") from None


def _file_witness(url: str) -> Witness:
    u = urlparse(url)
    path = u.path if u.scheme == "file" else url
    if not path:
        raise ValueError(f"witness {url!r}: give a directory, e.g. file:///var/lib/harness/audit-witness")
    return FileWitness(path)


# Witness kinds by URL scheme ("" = a plain path). A WORM bucket or a witness service is added here.
WITNESS_KINDS: dict[str, Callable[[str], Witness]] = {"": _file_witness, "file": _file_witness}


def open_witness(url: str) -> Witness:
    scheme = urlparse(url).scheme
    if scheme not in WITNESS_KINDS:
        raise ValueError(
            f"witness {url!r}: unknown kind {scheme!r} (known: {', '.join(k for k in WITNESS_KINDS if k)})"
        )
    return WITNESS_KINDS[scheme](url)


# ---- judging a chain against the checkpoints ----


@dataclass(frozen=True)
class AnchorVerdict:
    failure: str  # TRUNCATED, REWRITTEN, FORGED_APPEND or CHECKPOINT_MISSING
    sequence: int  # the first record concerned (0 when none)
    reason: str
    expected: str = ""
    found: str = ""


def check_continuity(entries: Iterable[SignedCheckpoint], public_key: Ed25519PublicKey):
    """Checks every checkpoint's signature and that each extends the one before it.

    Returns (verdict or None, the last checkpoint or None). A checkpoint whose base is not its
    predecessor's head records that, between two appends by the service, the log changed under
    it: records appeared (forged append), disappeared (truncation) or changed (rewrite)."""
    prev: SignedCheckpoint | None = None
    for e in entries:
        c = e.checkpoint
        if not signature_ok(public_key, e):
            return AnchorVerdict(
                CHECKPOINT_MISSING, c.sequence,
                f"the checkpoint of record {c.sequence} ({c.time}) does not verify with the audit "
                f"service's key {key_id(public_key)} (signed by {e.key_id!r}): the witness was tampered with",
            ), prev  # fmt: skip
        base = (0, "") if prev is None else (prev.checkpoint.sequence, prev.checkpoint.head_hash)
        if not c.adopted and (c.base_sequence, c.base_hash) != base:
            return _discontinuity(base, c), e
        prev = e
    return None, prev


def _discontinuity(base: tuple[int, str], c: Checkpoint) -> AnchorVerdict:
    signed_seq, signed_hash = base
    if c.base_sequence > signed_seq:
        return AnchorVerdict(
            FORGED_APPEND, signed_seq + 1,
            f"records {signed_seq + 1}..{c.base_sequence} were in the database when the service next "
            f"appended ({c.time}), but no signed checkpoint covers them: they were written outside "
            "the audit service",
            expected=str(signed_seq), found=str(c.base_sequence),
        )  # fmt: skip
    if c.base_sequence < signed_seq:
        return AnchorVerdict(
            TRUNCATED, c.base_sequence + 1,
            f"records {c.base_sequence + 1}..{signed_seq} had been signed but were gone when the service "
            f"next appended ({c.time}): they were deleted and their sequence numbers reused",
            expected=str(signed_seq), found=str(c.base_sequence),
        )  # fmt: skip
    return AnchorVerdict(
        REWRITTEN, signed_seq,
        f"record {signed_seq} had another hash when the service next appended ({c.time}) than its "
        "signed checkpoint says: the log was rewritten",
        expected=signed_hash, found=c.base_hash,
    )  # fmt: skip


def check_head(
    latest: SignedCheckpoint | None, head_sequence: int, hash_at: Callable[[int], str | None]
) -> AnchorVerdict | None:
    """Compares the log's head with the latest signed checkpoint."""
    if latest is None:
        if head_sequence == 0:
            return None
        return AnchorVerdict(
            CHECKPOINT_MISSING, 1,
            f"the log has {head_sequence} records but the witness holds no signed checkpoint: "
            "truncation or a rewrite cannot be ruled out (the witness was lost or never written)",
        )  # fmt: skip
    c = latest.checkpoint
    if head_sequence < c.sequence:
        what = (
            "every record was deleted"
            if head_sequence == 0
            else f"records {head_sequence + 1}..{c.sequence} were deleted"
        )
        return AnchorVerdict(
            TRUNCATED, head_sequence + 1,
            f"the log ends at record {head_sequence} but the checkpoint signed {c.time} covers "
            f"{c.sequence} records: {what}",
            expected=str(c.sequence), found=str(head_sequence),
        )  # fmt: skip
    stored = hash_at(c.sequence)
    if stored != c.head_hash:
        return AnchorVerdict(
            REWRITTEN, c.sequence,
            f"record {c.sequence} hashes to {stored} but the checkpoint signed {c.time} says "
            f"{c.head_hash}: the log was rewritten and its hashes recomputed",
            expected=c.head_hash, found=stored or "",
        )  # fmt: skip
    if head_sequence > c.sequence:
        return AnchorVerdict(
            FORGED_APPEND, c.sequence + 1,
            f"records {c.sequence + 1}..{head_sequence} follow the last signed checkpoint "
            f"({c.time}, record {c.sequence}): no checkpoint covers them, so they were written "
            "outside the audit service",
            expected=str(c.sequence), found=str(head_sequence),
        )  # fmt: skip
    return None
