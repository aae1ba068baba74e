"""The gRPC contract's session_id/step_id request fields reach the call's context (audit and usage
lineage) just as the x-harness-session-id/-step-id headers do; a field that is set wins."""

from __future__ import annotations

import pytest

from services.common import context as reqctx
from services.common.context import MAX_LINEAGE_ID_CHARS
from services.common.errors import InvalidArgument
from services.router.servicer import adopt_lineage


def in_context(session_header: str, step_header: str, session_field: str, step_field: str) -> tuple[str, str]:
    headers = [("x-harness-session-id", session_header), ("x-harness-step-id", step_header)]
    token = reqctx.set_current(reqctx.context_from_metadata(headers))
    try:
        adopt_lineage(session_field, step_field)
        ctx = reqctx.current()
        return ctx.session_id, ctx.step_id
    finally:
        reqctx.reset_current(token)


def test_fields_that_are_set_replace_the_headers():
    assert in_context("hdr-session", "hdr-step", "case-1234", "7") == ("case-1234", "7")
    assert in_context("hdr-session", "hdr-step", "case-1234", "") == ("case-1234", "hdr-step")
    assert in_context("", "", "", "3") == ("", "3")


def test_empty_fields_keep_the_headers_and_the_request_id():
    headers = [("x-harness-session-id", "hdr-session"), ("x-request-id", "rid-1")]
    token = reqctx.set_current(reqctx.context_from_metadata(headers))
    try:
        adopt_lineage("", "")
        assert (reqctx.current().session_id, reqctx.current().request_id) == ("hdr-session", "rid-1")
        adopt_lineage("s", "")
        assert (reqctx.current().session_id, reqctx.current().request_id) == ("s", "rid-1")
    finally:
        reqctx.reset_current(token)


def test_an_id_over_the_limit_is_refused_with_its_field_name():
    with pytest.raises(InvalidArgument, match="session_id is 257 characters; the limit is 256"):
        adopt_lineage("x" * (MAX_LINEAGE_ID_CHARS + 1), "")
    with pytest.raises(InvalidArgument, match="step_id"):
        adopt_lineage("", "y" * (MAX_LINEAGE_ID_CHARS + 1))


@pytest.mark.parametrize("sent", ["case\t1", "caf\u00e9", "case 1", "s\x00"])
def test_a_field_of_other_than_visible_ascii_is_refused_as_the_header_is(sent):
    """One rule for the fields and the x-harness-session-id/-step-id headers they replace."""
    with pytest.raises(InvalidArgument, match=r"^session_id holds .* visible ASCII only"):
        in_context("hdr-session", "hdr-step", sent, "")
    with pytest.raises(InvalidArgument, match=r"^step_id holds"):
        in_context("hdr-session", "hdr-step", "", sent)
