"""Redaction of streamed model output, chunk by chunk.

A value can be split across chunks ("138" + "12345678"), so text that may be the beginning of
a value is held until more text arrives or the stream ends. With built-in recognizers only
that is the earliest suffix of the last ``holdback`` characters that could begin a value
(each recognizer's ``partial``: typically the last word or digit run), so ordinary prose is
released a word behind the model; with a configured pattern (whose beginnings are unknown) it
is the whole window. Any value that starts in the released part is no longer than
``holdback`` and so lies wholly in the buffer when it is examined.
"""

from __future__ import annotations

from collections import Counter

from .engine import Redactor
from .normalize import normalize

DEFAULT_HOLDBACK = 128  # longer than any built-in value (emails are capped by the regex)


class StreamRedactor:
    def __init__(self, redactor: Redactor, holdback: int = DEFAULT_HOLDBACK) -> None:
        self.redactor = redactor
        self.holdback = holdback
        self.counts: Counter[str] = Counter()
        self._buf = ""

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the redacted text that is now safe to release (may be "")."""
        if not self.redactor.enabled:
            return chunk
        self._buf += chunk
        # Decided on the folded text ("１３８", "138\u200b1234" may begin a value too), then
        # mapped back to a position in the buffer.
        folded = normalize(self._buf)
        cut = len(folded.text) - self.holdback
        unfinished = self.redactor.unfinished
        if unfinished is not None:
            m = unfinished.search(folded.text, max(0, cut))
            cut = m.start() if m else len(folded.text)
        if cut <= 0:
            return ""
        cut = folded.start(cut) if cut < len(folded.text) else len(self._buf)
        spans = self.redactor.find(self._buf, folded)
        for s in spans:  # never release part of a value
            if s.start < cut < s.end:
                cut = s.start
        return self._release(cut, [s for s in spans if s.end <= cut])

    def flush(self) -> str:
        """End of stream: release the rest."""
        if not self._buf:
            return ""
        return self._release(len(self._buf), self.redactor.find(self._buf))

    def _release(self, cut: int, spans: list) -> str:
        parts, pos = [], 0
        for s in spans:
            parts += [self._buf[pos : s.start], self.redactor.replacement(s)]
            pos = s.end
        parts.append(self._buf[pos:cut])
        self.counts.update(s.kind for s in spans)
        self._buf = self._buf[cut:]
        return "".join(parts)
