"""cffi builder for lsvfs._core (API mode, out-of-line).

The cdef is generated from csrc/lsvfs_core.h so the header stays the single
source of truth for the C API. Compile flags can be replaced through the
LSVFS_CFLAGS environment variable (the sanitizer build uses it); they are
passed to the linker too so -fsanitize=... links its runtime.
LSVFS_WERROR=1 adds -Werror to the default flags.
"""

from __future__ import annotations

import os
import re
import shlex

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "lsvfs_core.h")
SOURCES = ["status.c", "crc64.c", "lz4block.c", "pageindex.c", "frame.c", "pagetable.c", "cache.c",
           "io.c", "local.c", "hydrate.c", "sharedpages.c", "replica.c", "vfs.c", "extension.c"]
DEFAULT_CFLAGS = ["-Wall", "-Wextra", "-O2", "-std=c11"]
# -Werror only where asked (CI and development: LSVFS_WERROR=1): a user's
# newer compiler with a new warning must not break `pip install`.
WERROR = ["-Werror"] if os.environ.get("LSVFS_WERROR") == "1" else []

_DEFINE_INT = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)\s+(-?(?:0[xX][0-9a-fA-F]+|\d+)[uUlL]*)\s*(?:/\*.*\*/)?\s*$")


def cdef_from_header(text: str) -> str:
    """Header text minus preprocessor lines, keeping integer #define constants.

    Everything else starting with '#' goes: #include (cffi knows the stdint
    types), and the include guard (#ifndef/#define without value/#endif).
    Functions marked LSVFS_PYTHON become cffi `extern "Python+C"` callbacks,
    which the C files call and lsvfs/vfs.py implements.
    Constants become `#define NAME ...` so the C compiler, not cffi's parser,
    supplies the value (cffi cannot parse suffixes like ULL).
    """
    out = []
    text = text.replace("LSVFS_PYTHON ", 'extern "Python+C" ')
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            out.append(line)
            continue
        m = _DEFINE_INT.match(line)
        if m:
            out.append(f"#define {m.group(1)} ...")
    return "\n".join(out)


def _cflags() -> list[str]:
    env = os.environ.get("LSVFS_CFLAGS")
    return shlex.split(env) if env else DEFAULT_CFLAGS + WERROR


with open(HEADER, encoding="utf-8") as f:
    _header = f.read()

ffibuilder = cffi.FFI()
ffibuilder.cdef(cdef_from_header(_header))
# Paths are relative to the repository root, where setup.py runs the build.
ffibuilder.set_source(
    "lsvfs._core",
    '#include "lsvfs_core.h"',
    sources=[os.path.join("csrc", s) for s in SOURCES],
    include_dirs=["csrc"],
    extra_compile_args=_cflags(),
    extra_link_args=[f for f in _cflags() if f.startswith(("-fsanitize", "-fno-sanitize"))],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
