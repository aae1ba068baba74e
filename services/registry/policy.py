"""Authorization policy: casbin RBAC with domains, stored in the registry's own database.

Subjects are users, `role:<name>` and `agent:<name>`; domains are projects; objects are
`agent:<name>`, `model:<name>`, `tool:<name>` (with `*` wildcards, keyMatch); actions are
invoke/read/write/delete. A request is allowed when some allow rule matches and no deny rule
does, so a deny always wins. Routers evaluate the same model text against their cached copy,
so `MODEL_TEXT` is the contract of what a rule means.
"""

from __future__ import annotations

import logging
import re
import threading

import casbin
from casbin.effect.default_effectors import AllowOverrideEffector
from casbin.model import Model as CasbinModel
from casbin_sqlalchemy_adapter import Adapter

from services.common.errors import InvalidArgument
from services.registry import domain as d
from services.registry.store import Store

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

ACTIONS = ("invoke", "read", "write", "delete")
EFFECTS = ("allow", "deny")
_OBJECT = re.compile(r"^(agent|model|tool):([a-z0-9*][a-z0-9._@*-]*)$")
_VALUE = re.compile(r"^[^,\s]+$")  # rules are stored and shown as CSV: no commas or spaces


def new_model() -> CasbinModel:
    model = CasbinModel()
    model.load_model_from_text(MODEL_TEXT)
    return model


def normalize_rule(rule: d.PolicyRule) -> d.PolicyRule:
    """Validates a rule; a 4-value "p" rule gets the effect "allow"."""
    values = tuple(rule.values)
    for v in values:
        if not _VALUE.match(v):
            raise InvalidArgument(
                f"policy value {v!r} is invalid: values must be non-empty, no commas or spaces"
            )
    if rule.ptype == "p":
        if len(values) == 4:
            values = (*values, "allow")
        if len(values) != 5:
            raise InvalidArgument(
                f"a 'p' rule has 5 values (subject, domain, object, action, allow|deny); got {len(values)}"
            )
        _sub, dom, obj, act, eft = values
        if dom != "*":
            d.check_label("domain (project)", dom)
        if not _OBJECT.match(obj):
            raise InvalidArgument(
                f"policy object {obj!r} is invalid: use agent:<name>, model:<name> or tool:<name> (* allowed)"
            )
        d.check_choice("policy action", act, (*ACTIONS, "*"), allow_empty=False)
        d.check_choice("policy effect", eft, EFFECTS, allow_empty=False)
    elif rule.ptype == "g":
        if len(values) != 3:
            raise InvalidArgument(
                f"a 'g' rule has 3 values (subject, role:<name>, domain); got {len(values)}"
            )
        if not values[1].startswith("role:"):
            raise InvalidArgument(f"role {values[1]!r} must be written role:<name>, e.g. role:analyst")
        d.check_label("domain (project)", values[2])
    else:
        raise InvalidArgument(
            f"policy type {rule.ptype!r} is invalid: use 'p' (rule) or 'g' (role assignment)"
        )
    return d.PolicyRule(rule.ptype, values)


class Policy:
    """The casbin enforcer over the store's database.

    casbin's enforcer is not thread-safe and store calls run in worker threads, hence the lock.
    Other registry replicas may change rules: every read first compares the last policy
    revision in the change log with the one loaded here and reloads when it moved.
    """

    def __init__(self, store: Store) -> None:
        # casbin dumps the model and every rule at INFO on each (re)load: noise, and it would
        # copy the whole policy into the service log on every change.
        logging.getLogger("casbin").setLevel(logging.WARNING)
        self._store = store
        self._lock = threading.RLock()
        self._enforcer = casbin.Enforcer(new_model(), Adapter(store.engine))
        self._explainer = AllowOverrideEffector()
        self._revision = store.last_revision("policy")

    def _refresh(self) -> None:
        latest = self._store.last_revision("policy")
        if latest != self._revision:
            self._enforcer.load_policy()
            self._revision = latest

    def add(self, rule: d.PolicyRule) -> bool:
        """Adds a rule; False when it already exists."""
        rule = normalize_rule(rule)
        with self._lock:
            self._refresh()
            if rule.ptype == "p":
                added = self._enforcer.add_policy(*rule.values)
            else:
                added = self._enforcer.add_named_grouping_policy("g", *rule.values)
            if added:
                self._revision = self._store.record_change("policy", rule.csv())
            return bool(added)

    def remove(self, rule: d.PolicyRule) -> bool:
        """Removes a rule; False when it did not exist."""
        rule = normalize_rule(rule)
        with self._lock:
            self._refresh()
            if rule.ptype == "p":
                removed = self._enforcer.remove_policy(*rule.values)
            else:
                removed = self._enforcer.remove_named_grouping_policy("g", *rule.values)
            if removed:
                self._revision = self._store.record_change("policy", rule.csv(), deleted=True)
            return bool(removed)

    def list(self, domain: str = "") -> list[d.PolicyRule]:
        """Rules, then role assignments; only those of `domain` when given."""
        with self._lock:
            self._refresh()
            if domain:
                p = self._enforcer.get_filtered_policy(1, domain)
                g = self._enforcer.get_filtered_named_grouping_policy("g", 2, domain)
            else:
                p = self._enforcer.get_policy()
                g = self._enforcer.get_named_grouping_policy("g")
        return [d.PolicyRule("p", tuple(v)) for v in p] + [d.PolicyRule("g", tuple(v)) for v in g]

    def check(self, sub: str, dom: str, obj: str, act: str) -> tuple[bool, str]:
        """(allowed, rule CSV that decided); the rule is "" when nothing matched (default deny)."""
        for name, value in (("subject", sub), ("domain", dom), ("object", obj), ("action", act)):
            if not value:
                raise InvalidArgument(f"CheckAccess needs a {name}")
        with self._lock:
            self._refresh()
            allowed, rule = self._enforcer.enforce_ex(sub, dom, obj, act)
            if allowed and not rule:
                # "allow and no deny" must see every rule, so casbin names no rule on allow;
                # re-run with allow-override, which stops at (and names) the first allow.
                original = self._enforcer.eft
                self._enforcer.set_effector(self._explainer)
                try:
                    _, rule = self._enforcer.enforce_ex(sub, dom, obj, act)
                finally:
                    self._enforcer.set_effector(original)
        return bool(allowed), d.PolicyRule("p", tuple(rule)).csv() if rule else ""
