#!/usr/bin/env bash
# Build lsvfs._core with AddressSanitizer + UndefinedBehaviorSanitizer into a
# temporary directory and run the core tests and the VFS tests (the C VFS's
# methods called directly, fuzzed reads, both drivers, many threads on their
# own connections) against that build.
#
#   bash csrc/sanitize.sh [pytest args: test files and options instead of the default set]
#   LSVFS_SANITIZER=thread bash csrc/sanitize.sh   # ThreadSanitizer instead, on the threaded tests
#
# Exits non-zero on any sanitizer report or test failure. The sanitized
# extension is imported through PYTHONPATH ahead of the source tree (a copy
# of the lsvfs package made of symlinks plus the sanitized _core); the script
# and the tests (LSVFS_EXPECT_CORE_DIR) both check that it is the one loaded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then PY="$ROOT/.venv/bin/python"; fi

MODE="${LSVFS_SANITIZER:-address}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/lsvfs-san.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
REPORTS="$TMP/reports"
mkdir -p "$REPORTS"

# ASan/TSan reports go to files and pytest runs with --capture=sys, so reports
# written to fd 2 reach the log: with fd capture, a dying process never hands
# its captured output back (GCC's UBSan ignores log_path).
if [ "$MODE" = thread ]; then
    # Only our code is instrumented: a report needs both racing accesses in
    # it, so what TSan finds here is ours (the interpreter is not checked).
    export LSVFS_CFLAGS="-O1 -g -fsanitize=thread -fno-omit-frame-pointer -Wall -Wextra -Werror -std=c11"
    RUNTIME="libtsan"
    PRELOAD="$(gcc -print-file-name=libtsan.so)"
    export TSAN_OPTIONS="halt_on_error=1:report_signal_unsafe=0:log_path=$REPORTS/tsan"
    DEFAULT_TESTS=(tests/test_native_vfs.py tests/test_fuzz_stress_and_chaos.py tests/test_core.py
                   tests/test_prefetch_and_hydration.py tests/test_read_your_writes.py tests/test_shared_pages.py
                   -k "threads or lock_levels or hot_path or s32_page_tables or s32_shared or hydration_readers or hydration_moves_on or hundred_waiters")
else
    # -fno-wrapv: Python's own CFLAGS carry -fwrapv, which defines signed
    # overflow and so hides it (and bad shifts) from UBSan.
    export LSVFS_CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -fno-wrapv -Wall -Wextra -Werror -std=c11"
    RUNTIME="libasan"
    PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$REPORTS/asan"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    export PYTHONMALLOC=malloc  # small Python buffers get ASan redzones too
    DEFAULT_TESTS=(tests/test_core.py tests/test_core_fuzz.py tests/test_native_vfs.py tests/test_vfs.py
                   tests/test_shared_pages.py
                   "tests/test_fuzz_stress_and_chaos.py::test_s32_shared_replica_hammered_from_every_side"
                   "tests/test_fuzz_stress_and_chaos.py::test_s32_page_tables_shared_across_threads"
                   # scenario tests that absorbed VFS tests
                   tests/test_sqlite_behaviour.py::test_s05_page_arithmetic_at_every_page_size
                   "tests/test_sqlite_behaviour.py::test_s20_open_waits_for_the_first_file[file]"
                   tests/test_faults_and_recovery.py::test_s10_poller_survives_listing_failures_and_allocation_failure
                   # hydration: C reads of the file while it advances under live writes
                   tests/test_prefetch_and_hydration.py::test_long_read_transaction_keeps_its_txid_while_hydration_moves_on
                   tests/test_prefetch_and_hydration.py::test_hydration_under_live_writes_equals_the_restore_at_every_txid
                   # read-your-writes floors: the lock calling into Python to wait, busy retries, pins
                   tests/test_read_your_writes.py::test_a_floor_never_reached_fails_with_the_busy_code_and_clearing_it_reads_again
                   tests/test_read_your_writes.py::test_a_busy_handler_retrying_does_not_wait_again
                   tests/test_read_your_writes.py::test_a_pin_wins_over_a_floor
                   # the shared page file read by the C read path of every process
                   "tests/test_shared.py::test_four_readers_keep_the_bank_invariant_and_one_leads[file-True]")
fi

echo "== building sanitized lsvfs._core in $TMP/build"
# cffi compiles from inside tmpdir; the builder's source paths are relative
# to the repository root, so give the build dir a csrc/ of its own.
mkdir -p "$TMP/build"
ln -s "$ROOT/csrc" "$TMP/build/csrc"
"$PY" - "$TMP/build" <<'PYEOF'
import sys
sys.path.insert(0, "csrc")
from build_core import ffibuilder
ffibuilder.compile(tmpdir=sys.argv[1], verbose=False)
PYEOF
SO="$(ls "$TMP"/build/lsvfs/_core*.so)"

# A package dir that is the source package except for _core.
PKG="$TMP/pkg/lsvfs"
mkdir -p "$PKG"
for f in "$ROOT"/lsvfs/* ; do
    case "$(basename "$f")" in _core*.so|_core.c|__pycache__) continue ;; esac
    ln -s "$f" "$PKG/"
done
cp "$SO" "$PKG/"

export LD_PRELOAD="$PRELOAD"
export LSVFS_SANITIZER_RUNTIME="$RUNTIME"
export PYTHONPATH="$TMP/pkg${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONSAFEPATH=1  # keep the cwd (the source tree) off sys.path[0]
export LSVFS_EXPECT_CORE_DIR="$TMP/pkg"

"$PY" - <<'PYEOF'
import os
import lsvfs._core as c
want = os.environ["LSVFS_EXPECT_CORE_DIR"]
assert c.__file__.startswith(want), f"imported {c.__file__}, not the sanitized build under {want}"
maps = open("/proc/self/maps").read()
assert os.environ["LSVFS_SANITIZER_RUNTIME"] in maps, "sanitizer runtime not loaded"
print("== sanitized core:", c.__file__)
PYEOF

LOG="$TMP/pytest.log"
set +e
if [ "$#" -eq 0 ]; then
    set -- "${DEFAULT_TESTS[@]}"
fi
"$PY" -m pytest -p no:cacheprovider --capture=sys -q "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
if compgen -G "$REPORTS/*" > /dev/null || \
   grep -qE "ERROR: AddressSanitizer|WARNING: ThreadSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior|Thread)Sanitizer" "$LOG"; then
    cat "$REPORTS"/* >&2 2>/dev/null || true
    echo "== sanitizer report found" >&2
    exit 1
fi
if [ "$rc" -ne 0 ]; then
    echo "== tests failed under sanitizers (exit $rc)" >&2
    exit "$rc"
fi
echo "== sanitizer run clean"
