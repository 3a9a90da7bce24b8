"""The central controllers, in two wings.

VPS management: scheduler, IPAM, VPS resolver, status, node lifecycle and deletion. Pure
decisions live beside the controllers that use them (`vps_decision.py`, `resolve.py`,
`schedule.py`, `ipam.py`, `status.py`, `nodes.py`); the I/O is in `booking.py`, `events.py`,
`manager.py` and `main.py`. Billing: `billing/`, reached only through `controllers.billing`.
Nothing here talks to libvirt or to a node directly: a node is reached only through its
`desired/` prefix in etcd.
"""
