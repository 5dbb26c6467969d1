# The cffi extension built from csrc/ (see csrc/build_core.py): its C API is
# csrc/lsvfs_core.h, reached through these two untyped objects.
from typing import Any

ffi: Any
lib: Any
