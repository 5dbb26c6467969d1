"""NATS JetStream object-store replicas: object `ltx/<level>/<min>-<max>.ltx`
in the bucket named by `nats://host[:port]/bucket` (nats-py, extra `lsvfs[nats]`).

- `connection`: the client, its event loop thread, credentials and errors;
- `chunks`: ranged reads by chunk message (layouts, chunk maps) and the LRU of
  kept chunks and small objects;
- `whole`: whole objects by one push consumer, checked chunk by chunk;
- `storage`: `NATSStorage`, the listing, and which of those a read takes.

Credentials: `nats://user:password@host`, `?token=`, or `?creds=FILE` (the
names of Litestream's `username`/`password`, `token` and `creds` settings).
"""

import nats  # noqa: F401 - the extra itself, so a missing one fails here even with our parts imported

from .storage import NATSStorage
from .whole import delivery_sequences as _delivery_sequences

__all__ = ["NATSStorage", "_delivery_sequences"]
