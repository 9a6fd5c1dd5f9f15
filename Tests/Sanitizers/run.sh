#!/usr/bin/env bash
# make test-sanitize: the unit tests under AddressSanitizer (with
# LeakSanitizer) and, separately, ThreadSanitizer, each in a build directory
# of its own (.build-address, .build-thread). Then, as root, the agent built
# with each sanitizer carries the tunnel, restart and policy integration
# tests (real kernel, real TLS, concurrent event loops); a report from any
# agent process fails the run even when the test passed.
#
#   SANITIZERS="address thread"   which ones
#   SANITIZE_INTEGRATION="..."    the integration test files ("" skips them)
set -u
cd "$(dirname "$0")/../.."
# Package.swift links mesh-agent-cni statically, which the sanitizer runtimes cannot be.
export MESH_AGENT_SANITIZE=1

SWIFT=${SWIFT:-swift}
PYTHON=${PYTHON:-python3}
SANITIZERS=${SANITIZERS:-address thread}
INTEGRATION=${SANITIZE_INTEGRATION-Tests/integration/test_hbone.py Tests/integration/test_restart.py Tests/integration/test_policy.py}
SUPPRESSIONS=$PWD/Tests/Sanitizers/leaks.supp

status=0
summary=()
for sanitizer in $SANITIZERS; do
    scratch=.build-$sanitizer
    reports=$(mktemp -d /tmp/mesh-agent-$sanitizer-reports.XXXXXX)
    case $sanitizer in
        address) unit_options=(ASAN_OPTIONS=detect_leaks=1 "LSAN_OPTIONS=suppressions=$SUPPRESSIONS:print_suppressions=0")
                 agent_options=("ASAN_OPTIONS=detect_leaks=1:log_path=$reports/agent" "LSAN_OPTIONS=suppressions=$SUPPRESSIONS:print_suppressions=0") ;;
        thread)  unit_options=(TSAN_OPTIONS=halt_on_error=0)
                 agent_options=("TSAN_OPTIONS=halt_on_error=0:log_path=$reports/agent") ;;
        *)       echo "test-sanitize: unknown sanitizer $sanitizer (address or thread)"; exit 2 ;;
    esac

    started=$(date +%s)
    if ! $SWIFT build --build-tests --sanitize="$sanitizer" --scratch-path "$scratch"; then
        echo "test-sanitize: the $sanitizer build failed"
        status=1
        continue
    fi
    built=$(date +%s)
    env "${unit_options[@]}" $SWIFT test --skip-build --sanitize="$sanitizer" --scratch-path "$scratch" || {
        echo "test-sanitize: unit tests under the $sanitizer sanitizer failed"
        status=1
    }
    tested=$(date +%s)

    agent="skipped"
    if [ -n "$INTEGRATION" ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "test-sanitize: the integration part needs root; run as root or set SANITIZE_INTEGRATION="
            status=1
        else
            # shellcheck disable=SC2086 # a list of files
            env "${agent_options[@]}" MESH_AGENT_BIN="$PWD/$scratch/debug" \
                $PYTHON -m pytest -q -rs -p no:cacheprovider $INTEGRATION || {
                echo "test-sanitize: integration tests with the agent under the $sanitizer sanitizer failed"
                status=1
            }
            if compgen -G "$reports/agent*" >/dev/null; then
                echo "test-sanitize: the agent under the $sanitizer sanitizer reported:"
                cat "$reports"/agent*
                status=1
            fi
            agent="$(( $(date +%s) - tested )) s"
        fi
    fi
    rm -rf "$reports"
    summary+=("$sanitizer: build $(( built - started )) s, unit tests $(( tested - built )) s, agent in integration tests $agent")
done

for line in "${summary[@]}"; do echo "test-sanitize: $line"; done
echo "test-sanitize: $( [ $status -eq 0 ] && echo passed || echo FAILED )"
exit $status
