#!/usr/bin/env bash
# The libFuzzer targets in Fuzz/Targets, built with ASan and coverage into
# .build-fuzz and run over their corpora in Fuzz/Corpus.
#
#   fuzz.sh build [debug|release]  build every target (release by default)
#   fuzz.sh fuzz [TARGET...]       build, then fuzz each target for FUZZ_SECONDS (default 60);
#                                  new inputs go to .build-fuzz/corpus/TARGET, and into
#                                  Fuzz/Corpus/TARGET only with FUZZ_MERGE=1 (merged: just
#                                  those that add coverage); crashes to .build-fuzz/crashes/TARGET
#   fuzz.sh regress [TARGET...]    build (debug), then run each target once over its committed corpus
#
# Fuzzing wants the optimized build (several times the executions a second);
# the replay in make test wants the one that builds in half the time.
# Exits 1 if any target crashed or broke an invariant. Replay one input with
#   SWIFT_BACKTRACE=enable=no .build-fuzz/release/FuzzTARGET FILE
set -uo pipefail
cd "$(dirname "$0")/.."

SWIFT=${SWIFT:-swift}
SCRATCH=.build-fuzz
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
# Swift's own crash backtracer and ASan's both want the fatal signal; ASan's
# report is the one that names the bad access.
export SWIFT_BACKTRACE=enable=no
# The corpus runs in CI: a slow input (an accidental quadratic path) fails like a crash.
LIMITS=(-timeout=10 -rss_limit_mb=2048)

# Builds every target in configuration $1 and sets BIN to where they are.
build() {
    local configuration=$1 swift runtime
    BIN=$SCRATCH/$configuration
    swift=$(readlink -f "$(command -v "$SWIFT")") || { echo "fuzz: $SWIFT is not on PATH" >&2; return 1; }
    # libFuzzer without its main: SwiftPM gives every executable a main, which
    # calls libFuzzer's driver (Fuzz/Support/FuzzSupport/Fuzzing.swift).
    runtime=$(ls "$(dirname "$swift")"/../lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a 2>/dev/null | head -n 1)
    [ -n "$runtime" ] || { echo "fuzz: libFuzzer (libclang_rt.fuzzer_no_main) is not in the Swift toolchain of $swift" >&2; return 1; }
    # Coverage as -sanitize=fuzzer would add it, but without linking libFuzzer's main;
    # -enable-testing for the targets' @testable imports of internal parsers.
    # The linker's "Cannot export local symbol" lines are about ASan's own symbols, and harmless.
    MESH_AGENT_FUZZ=1 "$SWIFT" build -c "$configuration" --scratch-path "$SCRATCH" \
        -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
        -Xswiftc -enable-testing -Xcc -fsanitize=fuzzer-no-link,address \
        -Xlinker "$runtime" -Xlinker -lstdc++ 2>&1 | grep -v "Cannot export local symbol"
    return "${PIPESTATUS[0]}"
}

targets() {
    if [ $# -gt 0 ]; then echo "$@"; else ls Fuzz/Targets; fi
}

final_stat() {
    grep -o "^stat::$1: *[0-9]*" "$2" | awk '{ print $2 }'
}

# Reports a finding of `target` in a run of `what`, whose log is `log`, and where its input is.
finding() {
    local what=$1 target=$2 log=$3 input
    input=$(grep -o "Test unit written to .*" "$log" | sed 's/Test unit written to //' | tail -n 1)
    echo "$what: $target: FOUND A CRASH${input:+, input $input} (log $log):"
    grep -E "Fatal error|ERROR: |SUMMARY: |invariant|Deadly signal|timeout" "$log" | head -n 8 | sed 's/^/    /'
}

fuzz() {
    local failed=() target corpus scratch log started runs news
    for target in $(targets "$@"); do
        corpus=Fuzz/Corpus/$target
        scratch=$SCRATCH/corpus/$target
        log=$SCRATCH/logs/$target.log
        mkdir -p "$corpus" "$scratch" "$SCRATCH/crashes/$target" "$SCRATCH/logs"
        started=$(date +%s)
        if "$BIN/Fuzz$target" "${LIMITS[@]}" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
            -artifact_prefix="$SCRATCH/crashes/$target/" "$scratch" "$corpus" >"$log" 2>&1; then
            runs=$(final_stat number_of_executed_units "$log")
            news=$(final_stat new_units_added "$log")
            echo "fuzz: $target: ${runs:-?} executions in $(($(date +%s) - started)) s, ${news:-0} new inputs in $scratch, no crash"
            if [ "${FUZZ_MERGE:-0}" = 1 ]; then
                "$BIN/Fuzz$target" "${LIMITS[@]}" -merge=1 "$corpus" "$scratch" >"$SCRATCH/logs/$target.merge.log" 2>&1 \
                    && echo "fuzz: $target: merged into $corpus ($(ls "$corpus" | wc -l) inputs)" \
                    || echo "fuzz: $target: merging failed (log $SCRATCH/logs/$target.merge.log)"
            fi
        else
            finding fuzz "$target" "$log"
            failed+=("$target")
        fi
    done
    summary fuzz "${failed[@]}"
}

regress() {
    local failed=() target log started
    for target in $(targets "$@"); do
        log=$SCRATCH/logs/$target.regress.log
        mkdir -p "$SCRATCH/logs" "$SCRATCH/crashes/$target"
        started=$(date +%s)
        # -runs=0: every corpus input once, no mutation, so the result is the same on every run.
        if "$BIN/Fuzz$target" "${LIMITS[@]}" -runs=0 -print_final_stats=1 \
            -artifact_prefix="$SCRATCH/crashes/$target/" "Fuzz/Corpus/$target" >"$log" 2>&1; then
            echo "fuzz-regress: $target: $(ls "Fuzz/Corpus/$target" | wc -l) corpus inputs in $(($(date +%s) - started)) s, no crash"
        else
            finding fuzz-regress "$target" "$log"
            failed+=("$target")
        fi
    done
    summary fuzz-regress "${failed[@]}"
}

summary() {
    local what=$1
    shift
    if [ $# -gt 0 ]; then
        echo "$what: crashes in $*"
        return 1
    fi
    echo "$what: no crash"
}

command=${1:-}
shift || true
case "$command" in
    build) build "${1:-release}" ;;
    fuzz) build release && fuzz "$@" ;;
    regress) build debug && regress "$@" ;;
    *) echo "usage: $0 build [debug|release] | fuzz [TARGET...] | regress [TARGET...]" >&2; exit 2 ;;
esac
