"""A NUL character (U+0000) in what the model would read is refused at the OpenAI front door as
it is on gRPC (where the services' interceptor refuses it in every string): a 400 naming where it
was sent, through the real Envoy, router core and engine simulator of test_openai_frontdoor.py."""

from __future__ import annotations

import httpx2
import pytest

from tests.helpers.router_fakes import MODEL
from tests.integration.test_openai_frontdoor import front  # noqa: F401 (the fixture)

pytestmark = pytest.mark.asyncio(loop_scope="module")
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    ("path", "fields", "field"),
    [
        ("chat/completions", {"messages": [SYSTEM, {"role": "user", "content": "hi\u0000"}]}, "messages[1].content"),
        ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\u0000"}]}]},
         "messages[0].content"),
        ("completions", {"prompt": "Say\u0000hello"}, "prompt"),
        ("chat/completions", {"messages": [SYSTEM, {"role": "user", "content": "hi"}], "stop": ["a\u0000"]},
         "sampling.stop[0]"),
    ],
)  # fmt: skip
async def test_a_nul_character_is_a_400_naming_where_it_was_sent(front, path, fields, field):  # noqa: F811
    async with httpx2.AsyncClient(verify=front.tls()) as http:
        response = await http.post(
            f"{front.base_url}/{path}",
            json={"model": MODEL, "max_tokens": 3, **fields},
            headers={"authorization": f"Bearer {front.token}"},
        )
        fine = await http.post(
            f"{front.base_url}/chat/completions",
            json={"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi \\u0000"}]},
            headers={"authorization": f"Bearer {front.token}"},
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] == f"{field} holds a NUL character (\\u0000), which is refused"
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_value")
    assert fine.status_code == 200, fine.text  # the six characters \u0000 are text like any other
