"""The policy documents shipped with the example, and how they are cut into chunks."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

DOCUMENTS = Path(__file__).resolve().parent / "documents"
MAX_CHUNK_CHARS = 360  # a paragraph or two: small enough that a source is one idea
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_DOCUMENTS = 1000
_CJK = re.compile(r"[\u3400-\u9fff]")
_SENTENCE_END = re.compile(r"(?<=[。！？.!?])\s*")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document; `text` is what is embedded and shown to the model."""

    doc: str  # file name, the source's citation
    title: str
    lang: str  # "zh" or "en"
    index: int
    text: str

    @property
    def ref(self) -> str:
        return f"{self.doc}#{self.index}"


def language(text: str) -> str:
    """ "zh" when a tenth or more of the letters are CJK ideographs, else "en"."""
    letters = [c for c in text if c.isalpha()]
    cjk = sum(1 for c in letters if _CJK.match(c))
    return "zh" if letters and cjk * 10 >= len(letters) else "en"


def _pieces(paragraph: str, limit: int) -> list[str]:
    """A paragraph, split at sentence ends when it is longer than `limit`."""
    if len(paragraph) <= limit:
        return [paragraph]
    out, current = [], ""
    for sentence in (s for s in _SENTENCE_END.split(paragraph) if s):
        if current and len(current) + len(sentence) > limit:
            out.append(current)
            current = ""
        current = (
            f"{current} {sentence}".strip() if current and not _CJK.search(sentence) else current + sentence
        )
    return [*out, current] if current else out


def chunk_document(name: str, text: str, limit: int = MAX_CHUNK_CHARS) -> list[Chunk]:
    """Paragraphs (blank-line separated) merged up to `limit` characters, each under the title.
    The first line `# Title` names the document; the title heads every chunk so that a chunk
    retrieved alone still says which policy it comes from."""
    lines = text.strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else name
    body = "\n".join(lines[1:] if lines and lines[0].startswith("#") else lines)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
    merged: list[str] = []
    for piece in (x for p in paragraphs for x in _pieces(p, limit)):
        if merged and len(merged[-1]) + len(piece) + 1 <= limit:
            merged[-1] += "\n" + piece
        else:
            merged.append(piece)
    lang = language(text)
    return [Chunk(name, title, lang, i, f"{title}\n{m}") for i, m in enumerate(merged)]


def load_chunks(folder: Path = DOCUMENTS) -> list[Chunk]:
    """Every `*.md` document of `folder`, chunked, in file-name order (bounded in count and size)."""
    files = sorted(folder.glob("*.md"))
    if not files:
        raise FileNotFoundError(f"no *.md documents in {folder}")
    if len(files) > MAX_DOCUMENTS:
        raise ValueError(
            f"{folder} holds {len(files)} documents; this example indexes at most {MAX_DOCUMENTS}"
        )
    chunks = []
    for path in files:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{path} is over {MAX_DOCUMENT_BYTES} bytes: split it into several documents")
        chunks += chunk_document(path.name, path.read_text(encoding="utf-8"))
    return chunks


def fingerprint(chunks: list[Chunk], embedding_model: str) -> str:
    """Names an index: the same documents embedded by the same model give the same name."""
    digest = hashlib.sha256(embedding_model.encode())
    for c in chunks:
        digest.update(f"\0{c.ref}\0{c.text}".encode())
    return digest.hexdigest()[:12]
