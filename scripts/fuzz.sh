#!/usr/bin/env bash
# Fuzzes every target of dfs_core::fuzz with AFL++ (afl.rs), each for a while, and fails if any
# input crashed one (the crashing inputs are kept in the output dir, to become regressions).
#
#   scripts/fuzz.sh [--seconds N] [--out DIR] [--minimize] [TARGET...]
#
#   --seconds N   how long each target runs (default 20: CI's brief run)
#   --out DIR     AFL's output (default fuzz/out): queues, crashes, fuzzer_stats
#   --minimize    afterwards, merge what each target's queue found into fuzz/corpus/<target>
#                 (afl-cmin: the smallest set reaching the same coverage), to commit
#
# Needs cargo-afl and its AFL++ build (`cargo install cargo-afl`, `cargo afl config --build`;
# .ci/run does both). Prints one line per target: executions, corpus, crashes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=20
out=out
minimize=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --minimize) minimize=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown flag $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frames messages chunk_file snapshot raft_log paths tokens)
fi

# AFL's checks of the machine's settings are for long campaigns on a dedicated host: a CI
# runner cannot change its CPU governor or core pattern, and needs neither for this.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
cargo afl build --release --quiet
bin=target/release/dfs-fuzz
mkdir -p "$out"
failed=0
for t in "${targets[@]}"; do
  [ -d "corpus/$t" ] || { echo "fuzz.sh: no corpus for target $t (the targets: frames messages chunk_file snapshot raft_log paths tokens)" >&2; exit 2; }
  rm -rf "${out:?}/$t"
  # -V: stop after this many seconds; a run that cannot start fails here.
  cargo afl fuzz -V "$seconds" -i "corpus/$t" -o "$out/$t" -- "$bin" "$t" > "$out/$t.log" 2>&1 || {
    echo "fuzz.sh: afl-fuzz failed on $t; its log:" >&2; tail -20 "$out/$t.log" >&2; exit 1; }
  stats="$out/$t/default/fuzzer_stats"
  execs=$(awk -F' *: *' '$1=="execs_done"{print $2}' "$stats")
  corpus=$(awk -F' *: *' '$1=="corpus_count"{print $2}' "$stats")
  crashes=$(awk -F' *: *' '$1=="saved_crashes"{print $2}' "$stats")
  hangs=$(awk -F' *: *' '$1=="saved_hangs"{print $2}' "$stats")
  echo "$t: ${seconds}s, $execs executions, corpus $corpus, crashes $crashes, hangs $hangs"
  if [ "$crashes" != "0" ]; then
    failed=1
    for f in "$out/$t/default/crashes"/id*; do
      echo "  crash: $f (replay: $bin $t < '$f')" >&2
    done
  fi
  if [ "$minimize" = 1 ]; then
    rm -rf "$out/$t.min"
    cargo afl cmin -i "$out/$t/default/queue" -o "$out/$t.min" -- "$bin" "$t" > "$out/$t.cmin.log" 2>&1
    # Named by content: the same input found twice is one file, and names carry no colons.
    # (afl-cmin hard-links what it keeps: an input already in the corpus is that file.)
    for f in "$out/$t.min"/*; do
      dest="corpus/$t/$(sha1sum < "$f" | cut -c1-16)"
      [ -e "$dest" ] || cp "$f" "$dest"
    done
  fi
done
exit $failed
