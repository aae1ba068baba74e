"""The access model (casbin RBAC with domains = projects) and how a decision is explained.

Shared by the registry (the source of truth, rules in its database) and the routers (a local
copy fed by the registry's Watch stream), so both decide every request the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import casbin
from casbin.effect.default_effectors import AllowOverrideEffector
from casbin.model import Model as CasbinModel

# A rule is p(sub, dom, obj, act, eft): deny wins over allow; nothing matching is a deny.
# g(user, role, dom) gives a subject a role within one project.
MODEL_TEXT = """
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act, eft

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub, r.dom) && (r.dom == p.dom || p.dom == "*") && keyMatch(r.obj, p.obj) \
&& (r.act == p.act || p.act == "*")
"""

_EXPLAINER = AllowOverrideEffector()

# Subjects are namespaced, so that no credential can name another kind of subject: a user
# (JWT subject or API key owner) is always `user:<name>`, whatever characters the name holds.
USER, ROLE, AGENT = "user:", "role:", "agent:"
SUBJECT_PREFIXES = (USER, ROLE, AGENT)


def user_subject(name: str) -> str:
    """The casbin subject of an end user (a token's `sub` is never used as is)."""
    return USER + name


def agent_subject(name: str) -> str:
    return AGENT + name


def policy_subject(value: str) -> str:
    """A subject as an admin writes it: `user:`, `role:` or `agent:` kept, a bare name is a
    user (how rules were written before subjects were namespaced). Raises ValueError for an
    unknown `kind:` prefix."""
    if value.startswith(SUBJECT_PREFIXES):
        return value
    if ":" in value:
        raise ValueError(
            f"subject {value!r} has an unknown kind: write user:<name>, role:<name> or agent:<name>"
        )
    return USER + value


def subject_label(subject: str) -> str:
    """How a subject reads in a message: "user 'alice'", "agent 'demo-agent'"."""
    kind, _, name = subject.partition(":")
    return f"{kind} {name!r}" if kind in ("user", "role", "agent") and name else repr(subject)


def new_model() -> CasbinModel:
    model = CasbinModel()
    model.load_model_from_text(MODEL_TEXT)
    return model


def new_memory_enforcer(rules: Iterable[tuple[str, tuple[str, ...]]] = ()) -> casbin.Enforcer:
    """An enforcer holding ``rules`` ((ptype, values) pairs) in memory, with no adapter."""
    # casbin logs the model and every rule at INFO on each load: noise in service logs.
    logging.getLogger("casbin").setLevel(logging.WARNING)
    enforcer = casbin.Enforcer(new_model())
    for ptype, values in rules:
        apply_rule(enforcer, ptype, values, deleted=False)
    return enforcer


def apply_rule(enforcer: casbin.Enforcer, ptype: str, values: tuple[str, ...], deleted: bool) -> None:
    if ptype == "g":
        (enforcer.remove_named_grouping_policy if deleted else enforcer.add_named_grouping_policy)(
            "g", *values
        )
    else:
        (enforcer.remove_policy if deleted else enforcer.add_policy)(*values)


def explain(
    enforcer: casbin.Enforcer, sub: str, dom: str, obj: str, act: str
) -> tuple[bool, tuple[str, ...]]:
    """(allowed, the p rule that decided); the rule is () when nothing matched (default deny).

    The caller serialises access to ``enforcer`` (it is not thread-safe).
    """
    allowed, rule = enforcer.enforce_ex(sub, dom, obj, act)
    if allowed and not rule:
        # "allow and no deny" must see every rule, so casbin names no rule on allow; re-run
        # with allow-override, which stops at (and names) the first allow.
        original = enforcer.eft
        enforcer.set_effector(_EXPLAINER)
        try:
            _, rule = enforcer.enforce_ex(sub, dom, obj, act)
        finally:
            enforcer.set_effector(original)
    return bool(allowed), tuple(rule)
