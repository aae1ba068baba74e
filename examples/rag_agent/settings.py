"""Where the Harness is and who calls it: the agent's certificate, the user's token, the session."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

SESSION_HEADER = "x-harness-session-id"
STEP_HEADER = "x-harness-step-id"
_NEEDED = ("HARNESS_OPENAI_BASE_URL", "HARNESS_MCP_URL", "HARNESS_CA", "HARNESS_CERT")


class SettingsError(Exception):
    """The connection settings are incomplete; the message says what to do."""


def read_env_file(path: Path) -> dict[str, str]:
    """`export KEY='value'` lines as `harness up` writes them (.harness/env)."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.removeprefix("export ").partition("=")
        if sep and key.startswith("HARNESS_"):
            values[key.strip()] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class Harness:
    """One agent calling the Harness for one user within one session."""

    openai_base_url: str
    mcp_url: str
    ca: Path
    cert: Path
    key: Path
    token: str
    agent: str
    session: str

    @classmethod
    def load(cls, env_file: Path, agent: str, user: str | None, session: str) -> Harness:
        """From .harness/env (or the HARNESS_* variables when the file is missing). The agent's
        certificate sits beside the demo agent's (`harness up` issues one per demo agent); the
        user's token is .harness/tokens/USER.jwt, or HARNESS_TOKEN when no user is named."""
        env = read_env_file(env_file) if env_file.is_file() else dict(os.environ)
        missing = [k for k in _NEEDED if not env.get(k)]
        if missing:
            raise SettingsError(
                f"{env_file} not found and {', '.join(missing)} not set: start the stack with "
                "`make run` (it writes .harness/env) or `source` an env file"
            )
        certs = Path(env["HARNESS_CERT"]).parent
        cert, key = certs / f"{agent}.pem", certs / f"{agent}.key"
        if not cert.is_file() or not key.is_file():
            raise SettingsError(
                f"no certificate for agent {agent!r} in {certs}: `harness certs issue agent {agent}`"
            )
        if user:
            token_file = env_file.parent / "tokens" / f"{user}.jwt"
            if not token_file.is_file():
                raise SettingsError(
                    f"no token for user {user!r} at {token_file}: `harness tokens issue {user}`"
                )
            token = token_file.read_text().strip()
        else:
            token = env.get("HARNESS_TOKEN", "")
        if not token:
            raise SettingsError("no user token: name a user (--user) or set HARNESS_TOKEN")
        return cls(
            env["HARNESS_OPENAI_BASE_URL"],
            env["HARNESS_MCP_URL"],
            Path(env["HARNESS_CA"]),
            cert,
            key,
            token,
            agent,
            session,
        )

    def tls(self) -> ssl.SSLContext:
        """The Harness CA and the agent's client certificate: the agent's identity is the connection."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def headers(self, step: str) -> dict[str, str]:
        """Lineage headers of one call: the run's session and this call's step."""
        return {SESSION_HEADER: self.session, STEP_HEADER: step}
