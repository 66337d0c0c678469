#!/usr/bin/env bash
# Run the test suite against native code built and run under a memory checker.
#
#   tools/memcheck.sh asan     [pytest arguments]   # AddressSanitizer build of the Cython kernels
#   tools/memcheck.sh valgrind [pytest arguments]   # valgrind memcheck (also sees Numba's JIT code)
#
# The build happens in a separate copy of the tree (a git worktree of HEAD in
# $MEMCHECK_DIR, default /tmp/fastrnn-memcheck-<mode>), never in place: the
# .so files of the working tree stay as they are. Uncommitted changes are not
# in the copy; commit (or pass MEMCHECK_REF=<commit>) first.
#
# asan:     the extensions are compiled and linked with -fsanitize=address; the
#           interpreter is not, so libasan is preloaded (LD_PRELOAD) and Python
#           allocates with plain malloc (PYTHONMALLOC=malloc) so that ASan sees
#           every block. Leak detection is off: CPython keeps objects alive at
#           exit on purpose. Numba is turned off (NUMBA_DISABLE_JIT=1 makes its
#           backend unavailable): its JIT code is not instrumented, and the run
#           is about the Cython kernels. Any error aborts the run with a report.
# valgrind: a normal build with -g; python runs under valgrind's memcheck with
#           PYTHONMALLOC=malloc. It checks every instruction, the Numba
#           backend's compiled code included (loaded from a cache filled
#           beforehand without valgrind, so nothing compiles under it). It is
#           ~50x slower: the default selection is the property tests, with
#           FASTRNN_HYPOTHESIS_EXAMPLES lowering their examples.
#
# Before the tests, a canary (a raw kernel writing one step past its output)
# must be caught, or the run stops: the checker is proven armed.
#
# Default test selection: asan the whole suite but the PyTorch/ONNX parity,
# demo and Numba tests and the RSS test; valgrind tests/test_properties.py and
# the memory-layout, empty and NaN tests of tests/test_backends.py. Pass pytest
# arguments to choose others. Exit status: pytest's, or the checker's
# (non-zero) on an error, or 3 if the canary went unnoticed.
set -euo pipefail

mode=${1:-}
shift || true
case "$mode" in
    asan|valgrind) ;;
    *) echo "usage: $0 asan|valgrind [pytest arguments]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$(command -v python)}
dir=${MEMCHECK_DIR:-/tmp/fastrnn-memcheck-$mode}
ref=${MEMCHECK_REF:-HEAD}

if [ -d "$dir" ]; then
    git -C "$dir" checkout --quiet --detach "$(git -C "$root" rev-parse "$ref")"
else
    git -C "$root" worktree add --quiet --detach "$dir" "$ref"
fi
cd "$dir"
echo "memcheck: $mode build of $(git rev-parse --short HEAD) in $dir"

export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONMALLOC=malloc
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

# MEMCHECK_BUILD=0 reuses the extensions of a previous run (same sources)
build=${MEMCHECK_BUILD:-1}

# the canary: a raw kernel handed an output whose memory is one step too
# short; the checker must report its out-of-bounds write before we trust it.
# The kernel checks y's shape and strides, so y is a (T, B, H) view that
# as_strided lays over a buffer of T - 1 steps: the shape is right, the
# memory is not, and only a memory checker can tell.
cat > canary.py <<'PY'
import numpy as np
from numpy.lib.stride_tricks import as_strided
from fastrnn._ext import rnn
T, B, I, H = 4, 2, 3, 5
x, w_ih, w_hh = np.ones((T, B, I)), np.ones((H, I)), np.ones((H, H))
short = np.empty((T - 1) * B * H)
y = as_strided(short, shape=(T, B, H), strides=(B * H * 8, H * 8, 8))
rnn.forward(x, w_ih, w_hh, np.zeros(H), None, False, False, np.empty((T, B, H)),
            np.zeros((2, B, H)), y)
PY

if [ "$mode" = asan ]; then
    # in CC and LDSHARED, so that setup.py's probes (OpenMP, -march=x86-64-v3),
    # which link small executables, build with the sanitizer too and pass
    cc=${CC:-gcc}
    [ "$build" = 0 ] || CC="$cc -fsanitize=address -fno-omit-frame-pointer -g" \
        LDSHARED="$cc -fsanitize=address -shared" \
        "$python" setup.py build_ext --inplace --force -q
    if [ $# -eq 0 ]; then
        # not: the PyTorch/ONNX parity tests (other runtimes' own native code),
        # test_numba (Numba is off here, which changes what it checks), and the
        # RSS test (ASan holds freed memory in quarantine, so RSS grows by design)
        set -- tests -p no:cacheprovider -q \
            --ignore=tests/test_torch_parity.py --ignore=tests/test_interop.py \
            --ignore=tests/test_peers.py --ignore=tests/test_lesson_model.py \
            --ignore=tests/test_demo.py --ignore=tests/test_numba.py \
            --deselect "tests/test_memory.py::test_ten_thousand_calls_do_not_grow_the_process"
    fi
    # libstdc++ too: ASan intercepts C++ exceptions (__cxa_throw), which fails
    # when libstdc++ is loaded only later by an extension (matplotlib's ft2font)
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
    export NUMBA_DISABLE_JIT=1
    # verify_asan_link_order=0: the runtime is preloaded, python itself is not instrumented
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0:${ASAN_OPTIONS:-}"
    # first prove that the checker is armed
    if "$python" canary.py > canary.log 2>&1; then
        echo "memcheck: ASan did not catch the canary's out-of-bounds write" >&2; exit 3
    fi
    grep -q "heap-buffer-overflow" canary.log || { cat canary.log >&2; exit 3; }
    echo "memcheck: ASan caught the canary (heap-buffer-overflow in rnn_forward_kernel)"
    "$python" -m pytest "$@"
else
    # FASTRNN_V3=0: the baseline kernels only. valgrind (3.19) aborts with "VEX
    # temporary storage exhausted" translating the x86-64-v3 build's unrolled
    # AVX2 packing loop; that build is ASan's to check
    [ "$build" = 0 ] || { find fastrnn/_ext -name "*_v3*.so" -delete
                          CFLAGS="-g" FASTRNN_V3=0 "$python" setup.py build_ext --inplace --force -q; }
    if [ $# -eq 0 ]; then
        set -- tests/test_properties.py tests/test_backends.py -p no:cacheprovider -q \
            -k "test_properties or noncontiguous or readonly or empty or nan or nonfinite"
    fi
    export NUMBA_CACHE_DIR="$dir/.numba-cache"
    # fill Numba's cache outside valgrind (every kernel, both dtypes), so that
    # nothing compiles under it
    "$python" - <<'PY'
import numpy as np, fastrnn
for dtype in (np.float32, np.float64):
    x = np.ones((3, 2, 4), dtype)
    for G, fwd, bwd, kw in ((1, fastrnn.rnn_forward, fastrnn.rnn_backward, {}),
                            (4, fastrnn.lstm_forward, fastrnn.lstm_backward, {}),
                            (4, fastrnn.lstm_forward, fastrnn.lstm_backward, {"weight_hr": np.ones((2, 5), dtype)}),
                            (3, fastrnn.gru_forward, fastrnn.gru_backward, {})):
        P = 2 if kw else 5
        w = [np.ones(s, dtype) for s in ((G * 5, 4), (G * 5, P))]
        states = [None] * (2 if G == 4 else 1)
        out = fwd(x, *states, *w, training=True, backend="numba", **kw)
        bwd(out.workspace, np.ones_like(out.y))
PY
    supp=()
    [ -f "$root/tools/valgrind-python.supp" ] && supp=(--suppressions="$root/tools/valgrind-python.supp")
    # --smc-check: Numba's JIT writes code into anonymous memory at run time
    vg=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --track-origins=no
        --smc-check=all-non-file "${supp[@]}")
    if "${vg[@]}" "$python" canary.py > canary.log 2>&1; then
        echo "memcheck: valgrind did not catch the canary's out-of-bounds write" >&2; exit 3
    fi
    grep -q "Invalid write" canary.log || { cat canary.log >&2; exit 3; }
    echo "memcheck: valgrind caught the canary (invalid write in rnn_forward_kernel)"
    "${vg[@]}" "$python" -m pytest "$@"
fi
