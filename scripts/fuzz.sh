#!/usr/bin/env bash
# Fuzzes rowcast's parsers with cargo-fuzz (libFuzzer): each target in turn, never two
# at once, for FUZZ_SECONDS seconds each, starting from the committed seeds.
# Not part of `cargo test` nor of .ci/run.
#
#   scripts/fuzz.sh                          # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh         # 5 minutes each
#   scripts/fuzz.sh client_frame token       # some targets
#
# cargo-fuzz needs nightly-only rustc flags (-Z sanitizer, -Z ...); on a stable
# toolchain RUSTC_BOOTSTRAP=1 allows them. Per target, the command run is:
#
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --debug-assertions \
#       --sanitizer "$FUZZ_SANITIZER" <target> corpus/<target> seeds/<target> \
#       -- -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1
#
# FUZZ_SANITIZER defaults to `address` (AddressSanitizer); `none` builds without it,
# faster, for toolchains where the sanitizer flags fail.
#
# Output: one line per target with its executions, coverage and result; a crashing
# input is saved under fuzz/artifacts/<target>/ and the script exits 1. Reproduce with
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -a -s address <target> artifacts/<target>/<file>
# and minimise with `cargo fuzz tmin` the same way. The whole log of a run is
# fuzz/artifacts/<target>/fuzz.log; new corpus entries go to fuzz/corpus/<target>/
# (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(client_frame change_mapping token)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Build everything first, so the fuzzing time is fuzzing.
cargo fuzz build --debug-assertions --sanitizer "$sanitizer"

failed=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target/fuzz.log"
    echo "fuzzing $target for ${seconds} s (log: fuzz/$log)" >&2
    started=$(date +%s)
    if cargo fuzz run --debug-assertions --sanitizer "$sanitizer" \
        "$target" "corpus/$target" "seeds/$target" \
        -- -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see fuzz/$log and fuzz/artifacts/$target/)"
        failed=1
    fi
    took=$(($(date +%s) - started))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    # The last status line of libFuzzer: "#N  DONE  cov: C ft: F corp: K/S ...".
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$status")
    summary+=("$target: ${took} s, ${execs:-?} execs, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, result: $result")
    echo "${summary[-1]}"
done

echo
echo "summary (sanitizer: $sanitizer, $(date -u +%Y-%m-%dT%H:%MZ)):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
