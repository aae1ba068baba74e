"""The vector store: Qdrant's client in local mode (a folder on disk) or a Qdrant server.

Each chunk is one point with two named vectors: `dense` (the Harness's embedding of the chunk)
and `lexical` (sparse term weights, `lexical.py`). A search runs both and fuses the two rankings
with reciprocal rank fusion, so an exact term (a form number, a Chinese phrase) is found even
where the embedding model is weak, and a paraphrase even where no term matches.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from qdrant_client import QdrantClient, models

from .corpus import Chunk
from .lexical import sparse_vector

DENSE, LEXICAL = "dense", "lexical"
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al.)


def open_client(where: str) -> QdrantClient:
    """`http(s)://...` is a Qdrant server; ":memory:" an in-process store; else a local folder."""
    if where.startswith(("http://", "https://")):
        return QdrantClient(url=where)
    if where == ":memory:":
        return QdrantClient(location=":memory:")
    return QdrantClient(path=where)


def point_id(ref: str) -> str:
    """A chunk's point id: stable, so indexing the same chunk again overwrites it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, ref))


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    dense_score: float  # cosine similarity of the question and chunk embeddings (0 if not found by it)
    lexical_score: float
    fused: float  # reciprocal rank fusion of both rankings


class PolicyIndex:
    """One collection of chunks; its name carries the corpus fingerprint (`corpus.fingerprint`)."""

    def __init__(self, client: QdrantClient, collection: str) -> None:
        self.client, self.collection = client, collection

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def create(self, dimensions: int) -> None:
        if self.exists():
            self.client.delete_collection(self.collection)
        self.client.create_collection(
            self.collection,
            vectors_config={DENSE: models.VectorParams(size=dimensions, distance=models.Distance.COSINE)},
            sparse_vectors_config={LEXICAL: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )

    def add(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> None:
        points = []
        for chunk, vector in zip(chunks, vectors, strict=True):
            ids, weights = sparse_vector(chunk.text)
            points.append(
                models.PointStruct(
                    id=point_id(chunk.ref),
                    vector={DENSE: list(vector), LEXICAL: models.SparseVector(indices=ids, values=weights)},
                    payload={
                        "doc": chunk.doc,
                        "title": chunk.title,
                        "lang": chunk.lang,
                        "index": chunk.index,
                        "text": chunk.text,
                    },
                )
            )
        self.client.upsert(self.collection, points=points, wait=True)

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def search(self, question: str, vector: Sequence[float], limit: int) -> list[Hit]:
        """The `limit` best chunks by fused rank of the dense and the lexical search."""
        dense = self.client.query_points(
            self.collection, query=list(vector), using=DENSE, limit=limit, with_payload=True
        ).points
        ids, weights = sparse_vector(question)
        lexical = (
            self.client.query_points(
                self.collection,
                query=models.SparseVector(indices=ids, values=weights),
                using=LEXICAL,
                limit=limit,
                with_payload=True,
            ).points
            if ids
            else []
        )
        found: dict[str, dict] = {}
        for name, ranking in ((DENSE, dense), (LEXICAL, lexical)):
            for rank, point in enumerate(ranking):
                entry = found.setdefault(
                    str(point.id), {"payload": point.payload, DENSE: 0.0, LEXICAL: 0.0, "rrf": 0.0}
                )
                entry[name] = point.score
                entry["rrf"] += 1.0 / (RRF_K + rank + 1)
        hits = [Hit(_chunk(e["payload"]), e[DENSE], e[LEXICAL], e["rrf"]) for e in found.values()]
        return sorted(hits, key=lambda h: h.fused, reverse=True)[:limit]


def _chunk(payload: dict) -> Chunk:
    return Chunk(payload["doc"], payload["title"], payload["lang"], int(payload["index"]), payload["text"])
