"""A local OIDC-style key server for tests: a JWKS and a discovery document on port 0, whose
keys the test rotates, and signing keys that mint tokens with a `kid`."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


@dataclass
class IdpKey:
    kid: str
    private: object
    algorithm: str

    @classmethod
    def rsa(cls, kid: str) -> IdpKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")

    @classmethod
    def ec(cls, kid: str) -> IdpKey:
        return cls(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")

    def jwk(self) -> dict:
        codec = RSAAlgorithm if self.algorithm.startswith("RS") else ECAlgorithm
        data = codec.to_jwk(self.private.public_key(), as_dict=True)  # type: ignore[attr-defined]
        return {**data, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def mint(self, sub: str, *, issuer: str, audience: str = "harness", ttl_s: int = 600, kid: str | None = None,
             **claims) -> str:  # fmt: skip
        now = int(time.time())
        body = {"sub": sub, "iss": issuer, "aud": audience, "iat": now, "exp": now + ttl_s, **claims}
        return jwt.encode(body, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid})


@dataclass
class JwksServer:
    """Serves /jwks (the current `keys`) and /.well-known/openid-configuration; counts requests."""

    keys: list[dict] = field(default_factory=list)
    issuer_override: str | None = None
    delay_s: float = 0.0  # each answer waits this long (a slow provider)
    hits: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                if server.delay_s:
                    time.sleep(server.delay_s)
                if self.path == "/jwks":
                    body = {"keys": list(server.keys)}
                elif self.path == "/.well-known/openid-configuration":
                    body = {
                        "issuer": server.issuer_override or server.issuer,
                        "jwks_uri": server.url + "/jwks",
                    }
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="jwks-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks"

    @property
    def discovery_url(self) -> str:
        return self.url + "/.well-known/openid-configuration"

    def publish(self, *keys: IdpKey) -> None:
        self.keys = [k.jwk() for k in keys]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
