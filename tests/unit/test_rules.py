"""specs.rules: each cross-object rule once — minimum disk, disks never shrink, one currency."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from specs import rules
from tests.helpers import builders as b

DISKS = st.integers(min_value=1, max_value=2000)


@given(plan_disk=DISKS, image_min=DISKS)
def test_a_server_disk_is_never_below_the_plan_or_the_image(plan_disk: int, image_min: int) -> None:
    """disk_gib covers both; min_disk_problem speaks exactly when the plan is below the image's minimum."""
    plan, image = b.plan(disk=plan_disk), b.image(min_disk=image_min)
    assert rules.disk_gib(plan, image) == max(plan_disk, image_min)
    assert (rules.min_disk_problem(plan, image) is not None) == (plan_disk < image_min)


@given(old=DISKS, new=DISKS)
def test_a_plan_change_never_shrinks_the_disk(old: int, new: int) -> None:
    """plan_change_problem refuses exactly the moves to a smaller disk (same currency)."""
    problem = rules.plan_change_problem(b.plan("a", disk=old), b.plan("b", disk=new))
    assert (problem is not None) == (new < old)
    assert problem is None or "never shrink" in problem


def test_a_plan_change_keeps_the_currency() -> None:
    """A move to a plan priced in another currency is refused, naming both currencies."""
    eur = b.plan("usd")
    usd = eur.model_copy(update={"spec": eur.spec.model_copy(update={
        "price": eur.spec.price.model_copy(update={"currency": "USD"})})})
    problem = rules.plan_change_problem(b.plan("eur"), usd)
    assert problem is not None and "USD" in problem and "EUR" in problem
    assert rules.plan_change_problem(b.plan("eur"), b.plan("eur2")) is None
