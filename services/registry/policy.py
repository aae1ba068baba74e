"""Authorization policy: casbin RBAC with domains, stored in the registry's own database.

Subjects are `user:<name>`, `role:<name>` and `agent:<name>` (a bare name in a rule or a check
is a user; see access.policy_subject); domains are projects; objects are
`agent:<name>`, `model:<name>`, `tool:<name>` (with `*` wildcards, keyMatch); actions are
invoke/read/write/delete. A request is allowed when some allow rule matches and no deny rule
does, so a deny always wins. Routers evaluate the same model text against their cached copy,
so `services.common.access.MODEL_TEXT` is the contract of what a rule means.
"""

from __future__ import annotations

import logging
import re
import threading

import casbin
from casbin_sqlalchemy_adapter import Adapter, CasbinRule
from sqlalchemy import delete
from sqlalchemy.orm import Session

from services.common.access import explain, new_model, policy_subject
from services.common.errors import InvalidArgument
from services.registry import domain as d
from services.registry.limits import check_policy_values
from services.registry.models import ProjectRow
from services.registry.store import Store

ACTIONS = ("invoke", "read", "write", "delete")
EFFECTS = ("allow", "deny")
_OBJECT = re.compile(r"^(agent|model|tool):([a-z0-9*][a-z0-9._@*-]*)$")
_VALUE = re.compile(r"^[^,\s]+$")  # rules are stored and shown as CSV: no commas or spaces


def normalize_rule(rule: d.PolicyRule) -> d.PolicyRule:
    """Validates a rule; a 4-value "p" rule gets the effect "allow"."""
    values = tuple(rule.values)
    check_policy_values(values)
    if values and values[0]:  # the first value of both rule kinds is a subject
        try:
            values = (policy_subject(values[0]), *values[1:])
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        check_policy_values(values)  # the user: prefix counts toward the stored length
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


class _TxAdapter(Adapter):
    """The casbin SQLAlchemy adapter, writing inside the transaction `Policy` opened.

    casbin's auto-save calls `add_policy`/`remove_policy` with no session of ours, and the stock
    adapter commits each in its own transaction; binding `session` first makes the rule and its
    change record commit (or roll back) together. Loading is the stock adapter's. The table
    itself is created by the migrations, not by the adapter.
    """

    def __init__(self, engine) -> None:
        super().__init__(engine, create_all_models=False)
        self.session: Session | None = None

    def _bound(self) -> Session:
        if self.session is None:
            raise RuntimeError("policy writes go through Policy.add/remove (no transaction bound)")
        return self.session

    def add_policy(self, sec, ptype, rule) -> None:
        self._bound().add(CasbinRule(ptype=ptype, **{f"v{i}": v for i, v in enumerate(rule)}))

    def remove_policy(self, sec, ptype, rule) -> bool:
        columns = (getattr(CasbinRule, f"v{i}") == v for i, v in enumerate(rule))
        result = self._bound().execute(delete(CasbinRule).where(CasbinRule.ptype == ptype, *columns))
        return bool(result.rowcount)


class Policy:
    """The casbin enforcer over the store's database.

    casbin's enforcer is not thread-safe and store calls run in worker threads, hence the lock.
    Other registry replicas may change rules: every read first compares the last policy
    revision in the change log with the one loaded here and reloads when it moved. Writes hold
    the store's writers' lock from the reload to the commit, so no other replica's rule can slip
    in between what this copy checked and what it wrote.
    """

    def __init__(self, store: Store) -> None:
        # casbin dumps the model and every rule at INFO on each (re)load: noise, and it would
        # copy the whole policy into the service log on every change.
        logging.getLogger("casbin").setLevel(logging.WARNING)
        self._store = store
        self._lock = threading.RLock()
        self._adapter = _TxAdapter(store.engine)
        self._enforcer = casbin.Enforcer(new_model(), self._adapter)
        self._revision = store.last_revision("policy")

    def _refresh(self) -> None:
        latest = self._store.last_revision("policy")
        if latest != self._revision:
            self._enforcer.load_policy()
            self._revision = latest

    def _write(self, rule: d.PolicyRule, deleted: bool) -> bool:
        with self._lock:
            try:
                with self._store.transaction(serialize=True) as s:
                    if not deleted:  # a rule's domain is a project (or "*" for every project)
                        domain = rule.values[1] if rule.ptype == "p" else rule.values[2]
                        if domain != "*":
                            self._store.need(
                                s,
                                ProjectRow,
                                domain,
                                "project",
                                "create it first: harness projects create NAME --team TEAM",
                            )
                    self._refresh()
                    loaded = self._revision
                    self._adapter.session = s
                    changed, revision = self._apply(rule, deleted), loaded
                    if changed:
                        revision = self._store.record(s, "policy", rule.csv(), deleted)
            except BaseException:
                # casbin changes its memory before the adapter writes: after any failure this
                # copy may hold what the database does not, so reload on next use.
                self._revision = -1
                raise
            finally:
                self._adapter.session = None
            self._revision = revision
        return changed

    def _apply(self, rule: d.PolicyRule, deleted: bool) -> bool:
        e = self._enforcer
        if rule.ptype == "p":
            return bool(e.remove_policy(*rule.values) if deleted else e.add_policy(*rule.values))
        if deleted:
            return bool(e.remove_named_grouping_policy("g", *rule.values))
        return bool(e.add_named_grouping_policy("g", *rule.values))

    def add(self, rule: d.PolicyRule) -> bool:
        """Adds a rule; False when it already exists. NotFound if its project does not exist."""
        return self._write(normalize_rule(rule), deleted=False)

    def remove(self, rule: d.PolicyRule) -> bool:
        """Removes a rule; False when it did not exist."""
        return self._write(normalize_rule(rule), deleted=True)

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
                raise InvalidArgument(
                    f"an access check needs a {name} (harness policies check SUBJECT DOMAIN OBJECT ACTION)"
                )
        try:
            sub = policy_subject(sub)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        with self._lock:
            self._refresh()
            allowed, rule = explain(self._enforcer, sub, dom, obj, act)
        return bool(allowed), d.PolicyRule("p", tuple(rule)).csv() if rule else ""
