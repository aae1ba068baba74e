"""`python -m services.common.healthcheck`: grpc.health.v1 Check over the service's own mTLS.

Kubernetes' built-in gRPC probe and Docker's healthchecks speak plaintext only, while every
Harness service listens with mutual TLS; this command is the exec probe both run instead. It
connects with the pod's own certificate, asks Health/Check and exits 0 only on SERVING (1 on any
other status or error, with the reason on stdout, which `kubectl describe pod` shows).

    python -m services.common.healthcheck --addr 127.0.0.1:50052 --authority registry \\
        --tls-cert tls.crt --tls-key tls.key --tls-ca ca.crt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck", description=__doc__.split("\n")[0]
    )
    p.add_argument("--addr", required=True, help="host:port of the gRPC server")
    p.add_argument("--service", default="", help="health service name ('' = the whole server)")
    p.add_argument("--tls-cert", default=env("TLS_CERT"), help="client certificate (env HARNESS_TLS_CERT)")
    p.add_argument("--tls-key", default=env("TLS_KEY"), help="its key (env HARNESS_TLS_KEY)")
    p.add_argument("--tls-ca", default=env("TLS_CA"), help="CA that signed the server (env HARNESS_TLS_CA)")
    p.add_argument(
        "--authority", default="", help="name the server's certificate carries (default: the host)"
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds the check may take")
    return p


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """(SERVING?, what was seen)."""
    options = [("grpc.ssl_target_name_override", args.authority)] if args.authority else []
    if args.tls_cert or args.tls_key or args.tls_ca:
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(args.tls_ca).read_bytes(),
                private_key=Path(args.tls_key).read_bytes(),
                certificate_chain=Path(args.tls_cert).read_bytes(),
            )
        except OSError as exc:
            return False, f"cannot read the TLS files: {exc}"
        channel = grpc.secure_channel(args.addr, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.addr, options=options)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ok, seen = check(args)
    print(f"{args.addr}: {seen}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
