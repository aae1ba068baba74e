"""Strict JSON types on the OpenAI front door, through the real Envoy, router core and engine
simulator of test_openai_frontdoor.py: a value of the wrong type ("0.5" or true for a number,
5.0 for an integer, 0 for a boolean) is a 400 `invalid_type` naming the field, as OpenAI answers
it, and the bodies the `openai` SDK and langchain-openai send with every sampling option set are
still taken."""

from __future__ import annotations

import httpx2
import pytest
from langchain_openai import ChatOpenAI

from tests.helpers.router_fakes import MODEL
from tests.integration.test_openai_frontdoor import MESSAGES, front  # noqa: F401 (the fixture)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize(
    ("path", "fields", "param", "code", "says"),
    [
        ("chat/completions", {"temperature": "0.5"}, "temperature", "invalid_type",
         "Invalid type for 'temperature': expected a number, but got a string instead."),
        ("chat/completions", {"max_tokens": 5.0}, "max_tokens", "invalid_type",
         "Invalid type for 'max_tokens': expected an integer, but got a decimal number instead."),
        ("chat/completions", {"n": True}, "n", "invalid_type", "expected an integer, but got a boolean"),
        ("chat/completions", {"stream_options": {"include_usage": True}}, "stream_options", "invalid_value",
         "The 'stream_options' parameter is only allowed when 'stream' is enabled."),
        ("chat/completions", {"service_tier": "whatever"}, "service_tier", "invalid_value", "'priority'"),
        ("completions", {"echo": 0}, "echo", "invalid_type", "expected a boolean, but got an integer"),
    ],
)  # fmt: skip
async def test_a_value_of_the_wrong_type_is_openais_400_naming_it(front, path, fields, param, code, says):  # noqa: F811
    body = {"model": MODEL, "max_tokens": 3, **fields}
    body |= {"messages": MESSAGES} if path.startswith("chat") else {"prompt": "Say hello"}
    async with httpx2.AsyncClient(verify=front.tls()) as http:
        response = await http.post(
            f"{front.base_url}/{path}", json=body, headers={"authorization": f"Bearer {front.token}"}
        )
    error = response.json()["error"]
    assert response.status_code == 400, error
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert says in error["message"]


async def test_the_sdk_with_every_sampling_option_it_types_is_taken(front):  # noqa: F811
    async with front.client() as client:
        whole = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_completion_tokens=4, temperature=1, top_p=0.9, seed=7, n=1,
            presence_penalty=0.0, frequency_penalty=0, logprobs=False, stop=["\n\n"], service_tier="auto",
            user="u-1", metadata={"case": "1234"}, store=False, parallel_tool_calls=None,
        )  # fmt: skip
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0.5, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        text = await client.completions.create(
            model=MODEL, prompt="Say hello", max_tokens=3, temperature=0, echo=False, best_of=1
        )
    assert whole.choices[0].message.content and text.choices[0].text
    assert chunks[-1].usage.completion_tokens == 4


async def test_langchain_whole_and_streamed_with_usage_is_taken(front):  # noqa: F811
    llm = ChatOpenAI(
        model=MODEL, base_url=front.base_url, api_key=front.token, max_tokens=4, temperature=0.2, top_p=1,
        seed=3, n=1, presence_penalty=0, frequency_penalty=0.0, stream_usage=True, max_retries=0,
        http_async_client=httpx2.AsyncClient(verify=front.tls()),
    )  # fmt: skip
    whole = await llm.ainvoke("Say hello")
    streamed = None
    async for chunk in llm.astream("Say hello"):
        streamed = chunk if streamed is None else streamed + chunk
    assert whole.content and streamed.content
    assert streamed.usage_metadata["output_tokens"] == 4
