"""A DigitalOcean-compatible v2 API over Hostplane's own kinds (issue 17; docs/adr/012).

`mapping` (pure: kinds -> DigitalOcean objects, action progress, pages), `records` (integer ids,
SSH keys and action records in etcd under `do/`), `service` (the work of each endpoint, scoped
to the customer), `errors` (DigitalOcean's error shape), `routes` (the /v2 app, mounted by
api.server). No second source of truth: droplets are VPS, sizes are plans; only what
DigitalOcean has and Hostplane does not (integer ids, account SSH keys, action objects) is kept
here.
"""
