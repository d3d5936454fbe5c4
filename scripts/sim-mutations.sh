#!/usr/bin/env bash
# Mutation check of the simulator's checker for the arbiter rules (docs/reliability.md): each
# line below breaks one rule in the real protocol code (or in the simulated etcd's
# compare-and-swap), rebuilds hotspare-sim, runs N seeds (default 20000) and restores the file.
# Every mutation must make seeds fail; a mutation that passes means the checker cannot see
# that rule broken. Prints one line per mutation.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
# The file being mutated and its copy: restored on any exit (a failed build under `set -e`, an
# interrupt), not only after a run that went well.
MUT_FILE= MUT_BAK=
restore() {
    if [[ -n $MUT_BAK ]]; then
        cp "$MUT_BAK" "$MUT_FILE"
        rm -f "$MUT_BAK"
        MUT_BAK=
    fi
}
trap restore EXIT
trap 'exit 130' INT TERM
mutate() { # file old new label
    local f=$1 label=$4
    MUT_FILE=$f
    MUT_BAK=$(mktemp)
    cp "$f" "$MUT_BAK"
    python3 - "$f" "$2" "$3" <<'PY' || { echo "$label: PATTERN NOT FOUND"; restore; return 1; }
import sys
f, old, new = sys.argv[1:4]
s = open(f).read()
assert old in s
open(f, 'w').write(s.replace(old, new, 1))
PY
    cargo build -q --release -p hotspare-proto --bin hotspare-sim
    local out
    out=$(target/release/hotspare-sim --seeds "$N" --from 0 2>&1 || true)
    restore
    echo "$label: $(echo "$out" | tail -1 | grep -o '"failed":[0-9]*')"
}
P=hotspare-proto/src
mutate $P/spare/claim.rs "until: now + wait," "until: now + wait * 0," "spare claims without waiting W"
mutate $P/primary.rs "let la = arbiter::arbiter_lease(a.cfg.lease, record.wait(), drift, margin);" "let la = a.cfg.lease * 3;" "arbiter lease not capped below W"
mutate $P/primary.rs "                    let until = sent + la;" "                    let until = now + la;" "arbiter lease anchored at the answer"
mutate $P/spare/stream.rs "if self.taken_over || self.taking_over.is_some() || self.claim.is_some() {" "if self.taken_over || self.taking_over.is_some() {" "spare grants leases while claiming"
mutate $P/spare/claim.rs "                Some((_, rec)) if rec == record || self.claimed_by_us(&rec) => self.won(now, rec.term)," "                Some((_, rec)) if rec.term > 0 => self.won(now, rec.term)," "unknown claim outcome taken as won"
mutate $P/sim/arbiter.rs "if self.term.as_ref().is_some_and(|(r, _)| *r == term_rev) {" "if self.term.is_some() || term_rev >= 0 {" "renewal ignores the term key"
mutate $P/sim/arbiter.rs "if now_rev == term_rev && self.alive_rev == alive_rev {" "if now_rev == term_rev {" "claim ignores the renewal key"
cargo build -q --release -p hotspare-proto --bin hotspare-sim
