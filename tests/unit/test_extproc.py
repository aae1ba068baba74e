"""The ext_proc front door's parts without servers: gRPC framing as Envoy cuts it, the
response path (counting and redacting each engine response before Envoy passes it on), the
relay's refusal of output policies it cannot apply, and the Envoy configuration it needs."""

from __future__ import annotations

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2
from tritonclient.grpc import service_pb2 as pb

from services.common import triton_tensors as tensors
from services.common.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from services.envoy.extproc import ENGINES_CLUSTER, EXTPROC_FILTER, STREAM_INFER_PATH, with_extproc
from services.envoy.render import EnvoyCerts, EnvoySpec, render_envoy_config
from services.router.call import Call, GenerationInput
from services.router.extproc.servicer import _Exchange
from services.router.extproc.wire import Frames, frame, replace_text
from services.router.privacy import AgentRedactors, OutputRedaction
from services.router.redaction_workers import RedactionWorkers
from services.router.stages.relay import NoOutputPolicy, RelayLink
from services.router.triton import parse_response
from services.router.triton_facade import FacadeModel


def _response(text: str, final: bool, output_tokens: int) -> pb.ModelStreamInferResponse:
    values = {"text_output": text, "num_output_tokens": output_tokens}
    resp = tensors.build_response(FacadeModel("m"), "id", values, final=final)
    return pb.ModelStreamInferResponse(infer_response=resp)


def test_messages_cut_anywhere_are_reassembled():
    messages = [_response(f"piece {i}", i == 2, i + 1) for i in range(3)]
    wire = b"".join(frame(m) for m in messages)
    for cut in range(1, len(wire)):
        frames = Frames(pb.ModelStreamInferResponse)
        got = frames.feed(wire[:cut]) + frames.feed(wire[cut:])
        assert got == messages and frames.pending == 0


@pytest.mark.parametrize(
    "wire, words",
    [
        (b"\x01\x00\x00\x00\x01x", "compressed"),
        (b"\x00\x7f\xff\xff\xff", "limit"),
        (b"\x00\x00\x00\x00\x02\xff\xff", "not a ModelStreamInferResponse"),
    ],
)
def test_bad_frames_are_refused_with_a_reason(wire, words):
    with pytest.raises(InvalidArgument, match=words):
        Frames(pb.ModelStreamInferResponse).feed(wire)


def test_replaced_text_reads_back():
    message = _response("13812345678 called", False, 3)
    replace_text(message.infer_response, "138****5678 called")
    assert parse_response(message.infer_response).text == "138****5678 called"


def _agent() -> registry_pb2.Agent:
    agent = registry_pb2.Agent(name="a1", project="p", state=common_pb2.AGENT_STATE_ONLINE, revision=1)
    agent.data_policy.pii.add(kind="phone", mode=registry_pb2.MASK_MODE_MASK)
    return agent


async def test_output_is_redacted_before_envoy_passes_it_on():
    """A phone number split across two engine responses, and across Envoy's body chunks, never
    leaves the processor in clear; the call's text and token count are what the caller got."""
    redactors = AgentRedactors("k", RedactionWorkers(workers=1))
    try:
        redactor, fingerprint = redactors.for_agent(_agent())
        exchange = _Exchange(router=None, auth=None, peer_ids=())  # type: ignore[arg-type]
        exchange.call = Call(GenerationInput(prompt="p", max_tokens=8))
        exchange.call.output = OutputRedaction(redactor, fingerprint, {})
        exchange.link = exchange.call.relay = RelayLink(sees_output=True)
        wire = b"".join(
            frame(m) for m in (_response("call 13812", False, 2), _response("345678 now", False, 4),
                               _response("", True, 4))
        )  # fmt: skip
        passed = Frames(pb.ModelStreamInferResponse)
        seen = []
        for i in range(0, len(wire), 7):  # Envoy's chunks fall anywhere
            body = ep.HttpBody(body=wire[i : i + 7], end_of_stream=i + 7 >= len(wire))
            (reply,) = await exchange._response_body(body)
            seen += passed.feed(reply.response_body.response.body_mutation.body)
        out = "".join(parse_response(m.infer_response).text for m in seen)
        assert out == "call [PHONE] now"
        chunks = [exchange.link.chunks.get_nowait() for _ in range(exchange.link.chunks.qsize())]
        assert "".join(c.text for c in chunks) == out and chunks[-1].final and chunks[-1].output_tokens == 4
    finally:
        redactors.close()


async def test_an_output_policy_is_refused_where_the_response_does_not_pass_the_router():
    redactors = AgentRedactors("k", RedactionWorkers(workers=1))
    try:
        redactor, fingerprint = redactors.for_agent(_agent())
        for sees_output, refused in ((False, True), (True, False)):
            call = Call(GenerationInput(prompt="p"))
            call.output = OutputRedaction(redactor, fingerprint, {})
            call.relay = RelayLink(sees_output=sees_output)
            if refused:
                with pytest.raises(FailedPrecondition, match="output redaction policy"):
                    await NoOutputPolicy().enter(call)
            else:
                await NoOutputPolicy().enter(call)
        plain = Call(GenerationInput(prompt="p"))  # an agent without a policy passes either way
        plain.output, plain.relay = OutputRedaction(None, "", {}), RelayLink()
        await NoOutputPolicy().enter(plain)
    finally:
        redactors.close()


async def test_a_bad_session_header_is_refused_before_anything_else_runs():
    """The lineage rule of every front door: refused naming the header, never written."""
    exchange = _Exchange(router=None, auth=None, peer_ids=())  # type: ignore[arg-type]
    exchange.header_list = [(":path", STREAM_INFER_PATH), ("x-harness-session-id", "case 1")]
    exchange.headers = dict(exchange.header_list)
    with pytest.raises(InvalidArgument, match=r"^the x-harness-session-id header holds ' '"):
        await exchange._start(pb.ModelInferRequest(model_name="m"))


async def test_a_credential_header_sent_twice_is_refused_as_at_every_door():
    """Envoy hands a repeated header over as two entries; keeping one of them silently (the
    last, in a dict) would let a caller's second token stand in for the first."""
    from envoy.config.core.v3 import base_pb2

    exchange = _Exchange(router=None, auth=None, peer_ids=())  # type: ignore[arg-type]
    sent = [(":path", STREAM_INFER_PATH), ("authorization", "Bearer a"), ("authorization", "Bearer b")]
    headers = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in sent])
    await exchange.handle(ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=headers)))
    with pytest.raises(Unauthenticated, match="the authorization header is sent more than once"):
        await exchange._start(pb.ModelInferRequest(model_name="m"))


def test_the_envoy_config_routes_streams_through_the_picker_and_nothing_else():
    spec = EnvoySpec("127.0.0.1", 0, 0, EnvoyCerts("ca", "cert", "key"), {n: [("127.0.0.1", 1)] for n in
                     ("router", "registry", "pool", "audit", "cost")})  # fmt: skip
    base = render_envoy_config(spec)
    cfg = with_extproc(base, listen_port=0, admin_port=0, count_tokens=True)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index(EXTPROC_FILTER) == len(names) - 2  # just before the router filter
    mode = hcm["http_filters"][names.index(EXTPROC_FILTER)]["typed_config"]["processing_mode"]
    assert mode["request_body_mode"] == "FULL_DUPLEX_STREAMED" and mode["response_body_mode"] == "STREAMED"
    first, *rest = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert first["match"]["path"] == STREAM_INFER_PATH and first["route"]["cluster"] == ENGINES_CLUSTER
    assert all(r["typed_per_filter_config"][EXTPROC_FILTER]["disabled"] for r in rest)
    assert base["static_resources"]["listeners"][0]["name"] == "harness_ingress"  # the input is untouched


def test_the_command_derives_a_listener_from_the_front_doors_config(tmp_path):
    import yaml

    from services.envoy import extproc

    spec = EnvoySpec("127.0.0.1", 8443, 9901, EnvoyCerts("ca", "cert", "key"), {"router": [("127.0.0.1", 1)]},
                     routes=(("/", "router"),))  # fmt: skip
    source = tmp_path / "envoy.yaml"
    source.write_text(yaml.safe_dump(render_envoy_config(spec)))
    out = tmp_path / "extproc.yaml"
    args = [
        "--from",
        str(source),
        "--port",
        "8444",
        "--admin-port",
        "9902",
        "--no-response-body",
        "--out",
        str(out),
    ]
    assert extproc.main(args) == 0
    cfg = yaml.safe_load(out.read_text())
    listener = cfg["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 8444
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    mode = next(f for f in hcm["http_filters"] if f["name"] == EXTPROC_FILTER)["typed_config"][
        "processing_mode"
    ]
    assert mode["response_body_mode"] == "NONE"
