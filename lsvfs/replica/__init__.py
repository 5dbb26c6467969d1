"""A live replica, in parts that each do one thing under their own lock.

- lifecycle.py: the Replica: open, start, close, the current snapshot, stats;
  it owns the resources and wires the parts below
- snapshot.py: the Snapshot, the database at one TXID
- twins.py: the C twins of snapshots, and which Snapshot each mirrors
- loader.py: snapshots built from LTX files' headers and page indexes
- poller.py: new files published as snapshots; a replaced replica noticed
- lineage.py: which lineage snapshots belong to, and what tells lineages apart
- reader.py: pages read on a miss, read-ahead, prefetch, rebuilds after retention
- retry.py: storage reads retried with backoff, and counted
- waits.py: readers waiting for a TXID (read-your-writes bookmarks), sharing polls
"""

from .lifecycle import Replica
from .snapshot import Snapshot

__all__ = ["Replica", "Snapshot"]
