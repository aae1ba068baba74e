"""Who may open, read and decide approvals (core code, no gRPC): every check takes the caller's
identity (from the connection and credentials, never from the request body)."""

from __future__ import annotations

from services.common.context import Identity
from services.common.errors import PermissionDenied, Unauthenticated

DECIDER_ROLES = frozenset({"admin", "approver"})
READER_ROLES = frozenset({"admin", "approver", "auditor"})


def _who(identity: Identity) -> str:
    return identity.user or identity.service or (f"agent {identity.agent}" if identity.agent else "anonymous")


def _authenticated(identity: Identity) -> None:
    if not (identity.user or identity.service or identity.agent):
        raise Unauthenticated("approvals need a caller identity (service certificate or bearer token)")


def require_requester(identity: Identity) -> str:
    """Only Harness services (own certificate) or admins open approvals; returns who asked."""
    _authenticated(identity)
    if identity.service and not identity.user:
        return identity.service
    if identity.is_admin:
        return identity.user
    if identity.service:  # a service forwarding a non-admin user's token still asks as the service
        return identity.service
    raise PermissionDenied(
        f"{_who(identity)} may not request approvals: only Harness services and admins may"
    )


def requesting_user(identity: Identity, named: str) -> str:
    """The user an approval is requested for. A Harness service calling as itself speaks for the
    user it serves (the router names the caller it authenticated); a person asks only for
    themselves, so they cannot open one "requested by bob" and then approve it."""
    if identity.service and not identity.user:
        return named
    if named and named != identity.user:
        raise PermissionDenied(
            f"{identity.user} may not request an approval on behalf of {named!r}: the requester is the caller"
        )
    return identity.user


def require_approval_reader(identity: Identity) -> None:
    """Admins, approvers and auditors read approvals; so does a Harness service calling without a
    user (the router polling). A user's call is judged by the user's roles, whatever the channel
    (the CLI's ops certificate does not let any user read)."""
    _authenticated(identity)
    if READER_ROLES.intersection(identity.roles) or (identity.service and not identity.user):
        return
    raise PermissionDenied(
        f"{_who(identity)} may not read approvals: it needs the admin, approver or auditor role"
    )


def require_decider(identity: Identity) -> str:
    """Deciding needs a user (a person, from the token) with the admin or approver role."""
    _authenticated(identity)
    if not identity.user:
        raise PermissionDenied(
            f"{_who(identity)} may not decide approvals: a user with the admin or approver role must"
        )
    if not DECIDER_ROLES.intersection(identity.roles):
        raise PermissionDenied(
            f"{identity.user} may not decide approvals: it needs the admin or approver role"
        )
    return identity.user
