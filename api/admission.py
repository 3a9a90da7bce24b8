"""Admission rules the API enforces on writes, beyond what one object's schema can say.

Disks never shrink (no provider supports it, and a smaller desired disk than the real one
is a state the node agent must refuse forever). So the API refuses, with the field path:

* a Subscription moving to a plan with a smaller disk than its current plan's, or priced in
  another currency (`specs.rules.plan_change_problem`, the rule the resize action uses too);
* a Plan whose disk is reduced while any Subscription uses it.

This module reads the store and raises `Invalid`; it must never write.
"""

from __future__ import annotations

from api.errors import Invalid
from reconcile.errors import NotFound
from reconcile.objects import Store
from specs import rules
from specs.kinds import Plan, Resource, Subscription


def _plan(store: Store, name: str) -> Plan | None:
    try:
        return store.get(Plan, name)
    except NotFound:
        return None  # a missing plan is the controllers' to report (condition PlanNotFound)


def needs_store(current: Resource, new: Resource) -> bool:
    """Whether `admit_update` would read the store for this change (most updates need no read)."""
    if isinstance(new, Subscription) and isinstance(current, Subscription):
        return new.spec.plan != current.spec.plan
    if isinstance(new, Plan) and isinstance(current, Plan):
        return new.spec.diskGiB < current.spec.diskGiB
    return False


def admit_update(store: Store, current: Resource, new: Resource) -> None:
    """Raise Invalid if replacing `current` by `new` breaks a cross-object rule."""
    if not needs_store(current, new):
        return
    if isinstance(new, Subscription) and isinstance(current, Subscription):
        old_plan, new_plan = _plan(store, current.spec.plan), _plan(store, new.spec.plan)
        if old_plan is not None and new_plan is not None:
            message = rules.plan_change_problem(old_plan, new_plan)
            if message is not None:
                raise Invalid(f"spec.plan: {message}", [{"path": "spec.plan", "message": message}])
    if isinstance(new, Plan) and isinstance(current, Plan):
        users = sorted(s.name for s in store.list(Subscription).items if s.spec.plan == new.name)
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            message = (f"cannot shrink from {current.spec.diskGiB} to {new.spec.diskGiB} GiB while subscriptions use "
                       f"this plan ({shown}); disks never shrink")
            raise Invalid(f"spec.diskGiB: {message}", [{"path": "spec.diskGiB", "message": message}])
