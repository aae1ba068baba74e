"""Anchors the audit chain outside its database: a signed checkpoint per append transaction,
written to the witness before the transaction commits (format, witness kinds and verdicts in
services/common/checkpoints.py). Core code: no gRPC; blocking (runs in the store's threads)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from services.common import audit_chain as chain
from services.common.checkpoints import (
    CHECKPOINT_MISSING,
    AnchorVerdict,
    Checkpoint,
    CheckpointSigner,
    SignedCheckpoint,
    Witness,
    WitnessError,
    check_continuity,
    check_head,
)
from services.common.errors import Unavailable

log = logging.getLogger("harness.audit.anchor")


@dataclass(frozen=True)
class AnchorCheck:
    verdict: AnchorVerdict | None
    latest: SignedCheckpoint | None


class ChainAnchor:
    def __init__(self, witness: Witness, signer: CheckpointSigner, now_us: Callable[[], int]) -> None:
        self.witness = witness
        self.signer = signer
        self._now_us = now_us
        self.discontinuities = 0  # appends that found the log changed since the last checkpoint

    def seal(self, base: tuple[int, str], head: tuple[int, str], *, adopted: bool = False) -> None:
        """Signs and writes the checkpoint of an append that moved the head from `base` to `head`.

        Called inside the append transaction, before it commits: if the witness cannot be
        written, the transaction rolls back and the caller gets UNAVAILABLE (no record without a
        checkpoint)."""
        try:
            latest = self.witness.latest()
            if not adopted:
                self._check_base(latest, base)
            cp = Checkpoint(
                sequence=head[0], head_hash=head[1], base_sequence=base[0], base_hash=base[1],
                time=chain.rfc3339(self._now_us()), adopted=adopted,
            )  # fmt: skip
            self.witness.append(self.signer.sign(cp))
        except WitnessError as exc:
            log.error("audit append refused: %s", exc)
            raise Unavailable(f"the audit witness cannot be written ({exc}); retry") from None

    def _check_base(self, latest: SignedCheckpoint | None, base: tuple[int, str]) -> None:
        signed = (latest.checkpoint.sequence, latest.checkpoint.head_hash) if latest else (0, "")
        if signed != base:
            # Recorded in the checkpoint itself (its base); Verify reports it. Say it now too.
            self.discontinuities += 1
            log.error(
                "the audit log changed outside the service: the last signed checkpoint is record %d "
                "(%s) but the database's head is record %d (%s); `harness audit verify` reports it",
                signed[0], signed[1][:16], base[0], base[1][:16],
            )  # fmt: skip

    def adopt(self, head: tuple[int, str]) -> bool:
        """Anchors a log that has records but no checkpoint yet (first start with a witness).
        Returns whether it did."""
        if head[0] == 0 or self.witness.latest() is not None:
            return False
        log.warning(
            "the audit witness %s has no checkpoint but the log has %d records: anchoring them as "
            "found (expected only on the first start with a witness)",
            self.witness.url, head[0],
        )  # fmt: skip
        self.seal((0, ""), head, adopted=True)
        return True

    def mark(self) -> int:
        return self.witness.mark()

    def check(self, head_sequence: int, hash_at: Callable[[int], str | None], mark: int) -> AnchorCheck:
        """Judges the log (head read under the chain lock together with `mark`) against every
        checkpoint written up to `mark`."""
        try:
            verdict, latest = check_continuity(self.witness.entries(mark), self.signer.public_key)
        except WitnessError as exc:
            return AnchorCheck(
                AnchorVerdict(CHECKPOINT_MISSING, 1, f"{exc}: the witness is unreadable"), None
            )
        if verdict is None:
            verdict = check_head(latest, head_sequence, hash_at)
        return AnchorCheck(verdict, latest)
