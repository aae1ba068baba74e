"""Lineage: the records of one trace or session as a tree (core code, no gRPC).

user -> agent@version -> step -> model calls and tool calls -> the other events of the call.

A model or tool call always hangs under its step. Any other event (authorization decision,
redaction, approval, budget decision, admin change) hangs under the call its parent_event_id
names when that call is in the tree, else under its own step. Siblings keep the order of their
first record's sequence; a branch node (user, agent version, step) carries no record.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

K = audit_pb2
_CALL_KINDS = {
    common_pb2.AUDIT_EVENT_KIND_MODEL_CALL: K.LINEAGE_NODE_KIND_MODEL_CALL,
    common_pb2.AUDIT_EVENT_KIND_TOOL_CALL: K.LINEAGE_NODE_KIND_TOOL_CALL,
}
NONE = "(none)"


def enum_short(enum_type, value: int) -> str:
    if not value:
        return ""
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    prefix = enum_type.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return name.removeprefix(prefix).lower()


def event_label(record: audit_pb2.AuditRecord) -> str:
    """`model:llama-3-8b invoke allow`, `tool:ledger delete pending_approval`, `approval:ledger delete deny by:bob`."""
    ev = record.event
    if ev.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL:
        head = f"model:{ev.model or NONE}"
    elif ev.kind == common_pb2.AUDIT_EVENT_KIND_TOOL_CALL:
        head = f"tool:{ev.tool or NONE}"
    else:
        head = f"{enum_short(common_pb2.AuditEventKind, ev.kind)}:{ev.tool or ev.model or ev.object or NONE}"
    parts = [head, ev.action, enum_short(common_pb2.Decision, ev.decision)]
    if ev.kind == common_pb2.AUDIT_EVENT_KIND_APPROVAL and "approver" in ev.details.fields:
        parts.append(f"by:{ev.details['approver']}")  # who approved or rejected
    return " ".join(p for p in parts if p)


def _branch(kind: int, label: str, name: str, version: str = "") -> audit_pb2.LineageNode:
    return audit_pb2.LineageNode(kind=kind, label=label, name=name, version=version)


def build_tree(records: Iterable[audit_pb2.AuditRecord]) -> list[audit_pb2.LineageNode]:
    """The lineage forest (one root per user) of `records`, which come oldest first."""
    ordered = sorted(records, key=lambda r: r.sequence)
    # Pass 1: one node per record, so a parent stored after its child is still found.
    nodes: dict[str, audit_pb2.LineageNode] = {}
    for rec in ordered:
        kind = _CALL_KINDS.get(rec.event.kind, K.LINEAGE_NODE_KIND_EVENT)
        node = audit_pb2.LineageNode(kind=kind, label=event_label(rec), name=rec.event.event_id)
        node.record.CopyFrom(rec)
        nodes.setdefault(rec.event.event_id, node)

    # Pass 2: place them. Protobuf repeated fields copy on append, so the tree is assembled
    # from plain holders ({"node", "children", "index"}) first and converted at the end.
    def holder(node: audit_pb2.LineageNode) -> dict:
        return {"node": node, "children": [], "index": {}}

    def child(parent: dict, key: str, node: audit_pb2.LineageNode) -> dict:
        if key not in parent["index"]:
            parent["index"][key] = holder(node)
            parent["children"].append(parent["index"][key])
        return parent["index"][key]

    roots: dict[str, dict] = {}
    calls: dict[str, dict] = {}  # event id -> holder of a model/tool call
    placed: list[tuple[common_pb2.AuditEvent, dict, dict]] = []  # (event, its holder, its step)
    for rec in ordered:
        ev = rec.event
        if nodes[ev.event_id].record.sequence != rec.sequence:
            continue  # one event id twice cannot be stored (UNIQUE); be safe anyway
        user, agent, version = ev.actor.user, ev.actor.agent, ev.actor.agent_version
        step = ev.correlation.step_id
        if user not in roots:
            roots[user] = holder(_branch(K.LINEAGE_NODE_KIND_USER, f"user:{user or NONE}", user))
        a_label = f"agent:{agent or NONE}" + (f"@{version}" if version else "")
        a = child(
            roots[user],
            f"{agent}\0{version}",
            _branch(K.LINEAGE_NODE_KIND_AGENT_VERSION, a_label, agent, version),
        )
        s = child(a, step, _branch(K.LINEAGE_NODE_KIND_STEP, f"step:{step or NONE}", step))
        h = holder(nodes[ev.event_id])
        if ev.kind in _CALL_KINDS:
            calls[ev.event_id] = h
        placed.append((ev, h, s))
    for ev, h, s in placed:
        parent = calls.get(ev.correlation.parent_event_id) if ev.kind not in _CALL_KINDS else None
        (parent or s)["children"].append(h)

    def build(h: dict) -> audit_pb2.LineageNode:
        node = h["node"]
        node.children.extend(build(c) for c in h["children"])
        return node

    return [build(h) for h in roots.values()]
