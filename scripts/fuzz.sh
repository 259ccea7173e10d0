#!/usr/bin/env bash
# Coverage-guided fuzzing (afl.rs / AFL++) of the parsers that take hostile bytes:
#
#   scripts/fuzz.sh [--seconds N] [--target NAME]... [--jobs N]
#
# Targets (fuzz/src/bin/): request (a POST /runs body, validated), state (run.json and
# phase JSON, round-tripped) and queue_message (Celery task messages and specrun's own).
# Installs cargo-afl (pinned) and builds AFL++ from the source it bundles when they are
# missing, builds the targets into fuzz/target, fuzzes each for N seconds (default 45)
# from the committed seeds in fuzz/corpus/<target>/, all at once unless --jobs says
# otherwise, and prints per target the execs done, execs/s, corpus size and crashes.
# Exits 1 when a target crashed (or could not run), naming each crashing input; replay
# one with `fuzz/target/<host>/release/<target> < <input>`. Findings are in fuzz/out/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Keep equal to the `afl` version in fuzz/Cargo.toml.
CARGO_AFL_VERSION=0.18.2
ALL_TARGETS=(request state queue_message)

usage() {
    sed -n '2,14s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

seconds=45
jobs=
targets=()
while [[ $# -gt 0 ]]; do
    [[ $# -ge 2 || "$1" == -h || "$1" == --help ]] || { echo "fuzz.sh: $1 needs a value" >&2; usage; }
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --target) targets+=("$2"); shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "fuzz.sh: unknown argument $1" >&2; usage ;;
    esac
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds needs a positive number" >&2; exit 2; }
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
    [[ -f "fuzz/src/bin/$t.rs" ]] || { echo "fuzz.sh: no target $t (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done
jobs="${jobs:-${#targets[@]}}"
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --jobs needs a positive number" >&2; exit 2; }

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
root="$PWD"
step() { echo "== fuzz: $*" >&2; }

# --- the tools -----------------------------------------------------------------------
start=$SECONDS
if ! cargo afl --version 2>/dev/null | grep -q "^cargo-afl $CARGO_AFL_VERSION\b"; then
    step "installing cargo-afl $CARGO_AFL_VERSION"
    # A debug build of this thin wrapper installs in three quarters of the time.
    cargo install --locked --debug --force cargo-afl --version "$CARGO_AFL_VERSION"
fi
# AFL++ itself (afl-fuzz and the runtime the targets link), built once per rustc version.
if ! cargo afl --version | grep -q 'AFL++ version' \
    || cargo afl whatsup -h 2>&1 | grep -q 'was not built'; then
    step "building AFL++ (bundled with cargo-afl)"
    cargo afl config --build --force
fi
tools_secs=$((SECONDS - start))

# --- the targets ---------------------------------------------------------------------
start=$SECONDS
host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$root/fuzz/target"
step "building ${targets[*]}"
# An explicit --target keeps AFL's instrumentation flags off build scripts and proc macros.
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo afl build --manifest-path fuzz/Cargo.toml --release --locked --target "$host" "${bins[@]}"
build_secs=$((SECONDS - start))
bin_dir="$CARGO_TARGET_DIR/$host/release"

# --- fuzzing -------------------------------------------------------------------------
# For containers and CI: no CPU governor or core-dump set-up to insist on, no screen, and
# several instances sharing the cores.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
    AFL_NO_AFFINITY=1 AFL_FAST_CAL=1 AFL_BENCH_UNTIL_CRASH=1 AFL_NO_WARN_INSTABILITY=1
out_root="$root/fuzz/out"
mkdir -p "$out_root"

fuzz_one() {
    local t="$1" out="$out_root/$1"
    rm -rf "$out" "$out.log"
    # -V counts fuzzing time only; the outer limit also covers start-up and calibration.
    timeout -k 10 $((seconds + 120)) cargo afl fuzz -V "$seconds" -t 1000 -a text \
        -x "fuzz/dict/$t.dict" -i "fuzz/corpus/$t" -o "$out" -- "$bin_dir/$t" \
        >"$out.log" 2>&1
}

start=$SECONDS
step "fuzzing ${targets[*]} for ${seconds}s each, $jobs at a time"
running=0
for t in "${targets[@]}"; do
    if [[ $running -ge $jobs ]]; then
        wait -n || true
        running=$((running - 1))
    fi
    fuzz_one "$t" &
    running=$((running + 1))
done
wait || true
fuzz_secs=$((SECONDS - start))

# --- the report ----------------------------------------------------------------------
stat_of() { sed -n "s/^$1 *: //p" "$2"; }
failed=0
printf '%-14s %12s %10s %8s %8s %6s %9s\n' target execs execs/s corpus crashes hangs coverage
for t in "${targets[@]}"; do
    stats="$out_root/$t/default/fuzzer_stats"
    if [[ ! -f "$stats" ]]; then
        printf '%-14s did not run; the end of %s:\n' "$t" "fuzz/out/$t.log"
        sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' "$out_root/$t.log" | tail -n 15
        failed=1
        continue
    fi
    printf '%-14s %12s %10s %8s %8s %6s %9s\n' "$t" \
        "$(stat_of execs_done "$stats")" "$(stat_of execs_per_sec "$stats")" \
        "$(stat_of corpus_count "$stats")" "$(stat_of saved_crashes "$stats")" \
        "$(stat_of saved_hangs "$stats")" "$(stat_of bitmap_cvg "$stats")"
done
for t in "${targets[@]}"; do
    crashes=("$out_root/$t/default/crashes"/id:*)
    [[ -e "${crashes[0]}" ]] || continue
    failed=1
    for crash in "${crashes[@]}"; do
        echo "CRASH in $t: ${crash#"$root/"}"
        # What the target says about it (the panic message).
        (RUST_BACKTRACE=0 timeout 10 "$bin_dir/$t" <"$crash" 2>&1; true) 2>/dev/null \
            | grep -v -e '^note:' -e '^$' | head -n 4 | sed 's/^/    /' || true
    done
done
for t in "${targets[@]}"; do
    hangs=("$out_root/$t/default/hangs"/id:*)
    [[ -e "${hangs[0]}" ]] || continue
    echo "warning: $t has ${#hangs[@]} input(s) slower than 1 s: ${hangs[0]#"$root/"} ..."
done
echo "fuzz: tools ${tools_secs}s, build ${build_secs}s, fuzzing ${fuzz_secs}s"
if [[ $failed -ne 0 ]]; then
    echo "fuzz: FAILED (see above; logs in fuzz/out/<target>.log)" >&2
    exit 1
fi
echo "fuzz: no crashes"
