"""One replica per host: processes sharing `shared_dir` share one poller, one download, one copy.

The leader (election.py: whoever holds the directory's flock) mirrors the
replica's LTX files into the directory (mirror.py, leader.py); every process
reads the mirror as a directory replica (storage.py); with hydration the
leader also writes one page file that every process reads (pages.py).
directory.py checks the directory and holds the owner and status files.
"""

from __future__ import annotations

from .storage import SharedStorage

__all__ = ["SharedStorage"]
