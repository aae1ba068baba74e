"""XFCC by its grammar, and the one agent it may name: a certificate SAN cannot forge a hop or a URI."""

from __future__ import annotations

import pytest

from services.common.context import Identity
from services.common.errors import Unauthenticated
from services.common.identity import XFCC_KEY, AuthConfig, Authenticator
from services.common.xfcc import XfccError, agent_from_xfcc, is_valid_name, parse_xfcc, values

PREFIX = "spiffe://harness.local/agent/"
# What Envoy 1.40 writes for a client cert (SANITIZE_SET, set_current_client_cert_details uri+subject).
ENVOY = 'By=spiffe://harness.local/envoy;Hash=ab12;Subject="CN={cn},OU=agent,O=Harness";URI={uri}'


def test_single_element_with_quoted_subject():
    header = 'By=spiffe://harness.local/envoy;Hash=ab12;Subject="CN=demo,O=Harness;x";URI=spiffe://harness.local/agent/demo'
    [element] = parse_xfcc(header)
    assert values(element, "uri") == ["spiffe://harness.local/agent/demo"]
    assert values(element, "Subject") == ["CN=demo,O=Harness;x"]
    assert values(element, "HASH") == ["ab12"]


def test_multiple_elements_escapes_and_repeated_keys():
    header = 'URI=spiffe://a/agent/one;DNS=a;DNS=b;Subject="CN=\\"q\\""' + ",URI=spiffe://a/agent/two"
    first, second = parse_xfcc(header)
    assert values(first, "DNS") == ["a", "b"]
    assert values(first, "Subject") == ['CN="q"']
    assert values(second, "URI") == ["spiffe://a/agent/two"]


@pytest.mark.parametrize(
    "header",
    [
        'URI=spiffe://x;Subject="CN=open',  # unterminated quote
        'URI=spiffe://x"y',  # quote inside a bare value
        "URI=spiffe://x;justtext",  # pair without '='
        "URI=spiffe://x,",  # empty element
        ";URI=spiffe://x",  # empty pair
        "U RI=x",  # bad key
        'Subject="a"b;URI=x',  # text after a quoted value
        "URI=" + "a" * 20_000,  # over the size bound
        ",".join(["URI=x"] * 9),  # over the element bound
    ],
)
def test_malformed_headers_are_refused(header: str):
    with pytest.raises(XfccError):
        parse_xfcc(header)


def test_one_agent_uri_is_the_agent():
    header = ENVOY.format(cn="demo-agent", uri=PREFIX + "demo-agent")
    assert agent_from_xfcc(header, PREFIX) == PREFIX + "demo-agent"
    assert agent_from_xfcc("By=spiffe://harness.local/envoy;URI=", PREFIX) == ""  # no URI SAN: no agent


@pytest.mark.parametrize(
    "san",
    [
        # The review's certificate: Envoy writes the SAN bare, so its ',' reads as a second hop.
        PREFIX + "demo-agent,URI=" + PREFIX + "ledger-rpa",
        # ... and its ';' as a second URI of the same hop.
        PREFIX + "demo-agent;URI=" + PREFIX + "ledger-rpa",
        PREFIX + "ledger-rpa;Hash=00",  # the right name, then forged pairs
        PREFIX + "ledger-rpa;DNS=x",
        PREFIX + "Ledger_RPA",
        PREFIX + "ledger-rpa/extra",
        PREFIX,
    ],
)
def test_forged_structure_never_names_another_agent(san: str):
    header = ENVOY.format(cn="demo-agent", uri=san)
    with pytest.raises(XfccError):
        agent_from_xfcc(header, PREFIX)


def test_a_parsed_header_is_answered_again_the_same_and_a_refused_one_refused_again():
    """agent_from_xfcc memoizes answers by (header, prefix); refusals are never remembered."""
    good = ENVOY.format(cn="demo-agent", uri=PREFIX + "demo-agent")
    bad = ENVOY.format(cn="demo-agent", uri=PREFIX + "demo-agent;URI=" + PREFIX + "ledger-rpa")
    for _ in range(3):
        assert agent_from_xfcc(good, PREFIX) == PREFIX + "demo-agent"
        assert agent_from_xfcc(good, "spiffe://other.local/agent/") == ""  # the prefix is in the key
        with pytest.raises(XfccError):
            agent_from_xfcc(bad, PREFIX)
    assert agent_from_xfcc.cache_info().currsize <= 256


def test_two_agent_uri_sans_are_refused():
    header = ENVOY.format(cn="x", uri=PREFIX + "demo-agent") + ";URI=" + PREFIX + "ledger-rpa"
    with pytest.raises(XfccError, match="2 agent URI SANs"):
        agent_from_xfcc(header, PREFIX)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("demo-agent", True),
        ("a", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("-a", False),
        ("a-", False),
        ("A", False),
        ("a_b", False),
        ("a.b", False),
        ("", False),
        ("a,b", False),
        ("a;b", False),
    ],
)
def test_agent_name_syntax(name: str, ok: bool):
    assert is_valid_name(name) is ok


class _Ctx:
    """A plaintext connection (no peer certificate)."""

    def auth_context(self) -> dict:
        return {}


async def test_authenticator_refuses_a_forged_hop_with_unauthenticated():
    auth = Authenticator(AuthConfig(trust_xfcc_without_tls=True))
    good = ENVOY.format(cn="demo-agent", uri=PREFIX + "demo-agent")
    ident: Identity = await auth.authenticate(_Ctx(), {XFCC_KEY: good})
    assert ident.agent == "demo-agent"
    forged = ENVOY.format(cn="demo-agent", uri=PREFIX + "demo-agent,URI=" + PREFIX + "ledger-rpa")
    with pytest.raises(Unauthenticated, match="client certificate identity refused"):
        await auth.authenticate(_Ctx(), {XFCC_KEY: forged})
