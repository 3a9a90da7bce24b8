"""The billing wing's status writes: the one module that builds a write of Subscription.status
or Customer.status (docs/architecture.md, "One writer per status field"; a test holds it).

Pure: each function returns the `Put` a caller commits inside its own guarded transaction.
"""

from __future__ import annotations

from controllers.billing.lifecycle import customer_state
from reconcile import keys
from reconcile.etcd import Put
from reconcile.objects import encode_status
from specs.kinds import Customer, CustomerStatus, Subscription, SubscriptionStatus
from specs.money import format_minor, to_minor


def subscription_status_put(name: str, status: SubscriptionStatus, root: str) -> Put:
    """Write a subscription's status (the billing controller; external billing's state webhook)."""
    return Put(keys.status_key(Subscription, name, root), encode_status(status))


def customer_status(customer: Customer, balance_minor: int, currency: str) -> CustomerStatus:
    """The customer's status for a balance: the balance and billing's verdict on it."""
    credit = to_minor(customer.spec.creditLimit, customer.spec.currency)
    return CustomerStatus(balance=format_minor(balance_minor, currency), balanceMinor=balance_minor,
                          state=customer_state(balance_minor, credit))


def customer_status_put(customer: Customer, balance_minor: int, currency: str, root: str) -> Put:
    """Write a customer's status (the ledger on every balance move; the billing controller opening an account)."""
    return Put(keys.status_key(Customer, customer.name, root),
               encode_status(customer_status(customer, balance_minor, currency)))
