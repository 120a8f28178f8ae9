#!/usr/bin/env bash
# First-run check: does the README's first command pass for a new user on a busy machine?
#
# Each of N runs: a fresh `git clone` of this repository (its committed HEAD) into a new
# temporary directory, a fresh virtual environment, an empty numba cache (NUMBA_CACHE_DIR: every
# kernel compiles from scratch), two CPU-bound processes running beside it for the whole run,
# and the README's first command exactly as written. Prints PASS/FAIL and the duration of each
# run and "k of N passed"; exits 0 only when every run passed. pip may use its own cache.
#
#   scripts/first_run_check.sh [N]          (default N = 5)
#
# Environment: PYTHON (interpreter for the venvs, default python3), RUN_TIMEOUT_S (deadline of
# one run, default 3600), KEEP=1 keeps every run's directory (failed runs' are always kept).
set -u

N="${1:-5}"
PYTHON="${PYTHON:-python3}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-3600}"
REPO="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" || exit 2
# The command the README tells a new user to run first; the check refuses to run if the README
# no longer says so (it would then check something the user is not told to do).
FIRST='pip install -e ".[test]" && pytest testplans/pilot'
if ! grep -qF -- "$FIRST" "$REPO/README.md"; then
    echo "README.md does not contain the first command '$FIRST': update $0" >&2
    exit 2
fi

HOGS=()
stop_hogs() {
    for pid in "${HOGS[@]}"; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    HOGS=()
}
trap 'stop_hogs; exit 130' INT TERM
trap stop_hogs EXIT

passed=0
for i in $(seq 1 "$N"); do
    work="$(mktemp -d "${TMPDIR:-/tmp}/first-run-check.XXXXXX")"
    log="$work/run.log"
    if ! git clone -q "$REPO" "$work/qkd-hil" >"$log" 2>&1 \
        || ! "$PYTHON" -m venv "$work/venv" >>"$log" 2>&1; then
        echo "run $i/$N: FAIL (clone or venv failed; log: $log)"
        continue
    fi
    mkdir -p "$work/numba-cache"
    for _ in 1 2; do
        "$PYTHON" -c 'while True: pass' &
        HOGS+=("$!")
    done
    t0=$(date +%s)
    (
        cd "$work/qkd-hil" || exit 2
        # shellcheck disable=SC1091
        . "$work/venv/bin/activate"
        export NUMBA_CACHE_DIR="$work/numba-cache"
        timeout --signal=INT --kill-after=30 "$RUN_TIMEOUT_S" bash -c "$FIRST"
    ) >>"$log" 2>&1
    rc=$?
    t1=$(date +%s)
    stop_hogs
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "run $i/$N: PASS in $((t1 - t0)) s"
        [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
    else
        summary="$(grep -E '^(FAILED|ERROR) |^overall:|passed|failed' "$log" | tail -n 3 | tr '\n' ' ')"
        echo "run $i/$N: FAIL (exit $rc) in $((t1 - t0)) s: ${summary:-see log} (log: $log)"
    fi
done
echo "$passed of $N passed"
[ "$passed" -eq "$N" ]
