"""Cross-object rules, each in exactly one place, used by every path that can change the field
(order, action, PATCH, PUT, apply, import) and by the controllers. Pure: values in, a problem
message (or a value) out; callers turn a problem into their own error naming the field.

* minimum disk: a server's disk is its plan's, but never below its image's `minDiskGiB`;
  an order whose plan is smaller than the image needs is refused;
* disks never shrink: a subscription may not move to a plan with a smaller disk;
* one currency: a subscription may not move to a plan priced in another currency.
"""

from __future__ import annotations

from specs.kinds import Image, Plan


def disk_gib(plan: Plan, image: Image) -> int:
    """The disk a server of `plan` running `image` gets."""
    return max(plan.spec.diskGiB, image.spec.minDiskGiB)


def min_disk_problem(plan: Plan, image: Image) -> str | None:
    """Why `plan` cannot run `image` (its disk is below the image's minimum), or None."""
    if plan.spec.diskGiB < image.spec.minDiskGiB:
        return (f"image {image.name!r} needs a disk of {image.spec.minDiskGiB} GiB; plan {plan.name!r} has "
                f"{plan.spec.diskGiB} GiB")
    return None


def disk_shrink_problem(old: Plan, new: Plan) -> str | None:
    """Why a subscription may not move from `old` to `new` because its disk would shrink, or None."""
    if new.spec.diskGiB < old.spec.diskGiB:
        return (f"plan {new.name!r} has a smaller disk ({new.spec.diskGiB} GiB) than the current plan "
                f"{old.name!r} ({old.spec.diskGiB} GiB); disks never shrink")
    return None


def currency_problem(old: Plan, new: Plan) -> str | None:
    """Why a subscription may not move from `old` to `new` because the currency changes, or None."""
    if new.spec.price.currency != old.spec.price.currency:
        return f"plan {new.name!r} is priced in {new.spec.price.currency}, not {old.spec.price.currency}"
    return None


def plan_change_problem(old: Plan, new: Plan) -> str | None:
    """Why a subscription may not move from plan `old` to plan `new`, or None (every rule of a plan change)."""
    return disk_shrink_problem(old, new) or currency_problem(old, new)
