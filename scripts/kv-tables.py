#!/usr/bin/env python3
"""Markdown tables for docs/benchmarks.md from kv-bench's JSON lines.

    scripts/kv-tables.py [docs/results/kv-bench.jsonl]

Prints the CheckSync thesis's tables (5.2/5.3, 5.4, redis-benchmark, 5.5, 5.6/5.7) with the
figures of this run beside the thesis's own, so the write-up never retypes a number by hand.
"""
import json
import sys
from collections import defaultdict

# The thesis's figures (../shared/seeds/002_*.txt, chapter 5).
THESIS_DISK_MB = {1000: 8.16, 10000: 8.16, 100000: 27.08, 1000000: 289.19, 10000000: 2287.61}
THESIS_STOP_MS = {1000: 15.11, 10000: 16.50, 100000: 24.80, 1000000: 441.87, 10000000: 2208.28}
THESIS_SERIAL = {  # interval -> (CheckSync req/s, % lost, Redis req/s, % lost)
    50: (13378.36, 29, 10817.00, 82),
    500: (18508.00, 2, 46693.80, 24),
    1000: (18667.16, 2, 53495.80, 13),
    2000: (18496.76, 3, 56111.20, 8),
    0: (18974.00, None, 61174.00, None),
}
THESIS_RESTORE_MS = {1000: 3.15, 10000: 5.87, 100000: 11.03, 1000000: 71.43, 10000000: 500.08}
THESIS_REMOTE_MS = {1000: 652.91, 10000: 595.02, 100000: 648.29, 1000000: 717.61, 10000000: 1132.09}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                # Lines of a separate run made only to draw a figure are not table data.
                if "run_for" not in r:
                    rows.append(r)
    return rows


def mb(b):
    return "–" if b is None else f"{b / 1e6:.2f}"


def keys_label(n):
    return f"{n:,}"


def state_table(rows):
    st = {(r["server"], r["keys"]): r for r in rows if r["kind"] == "state"}
    sizes = sorted({k for (_, k) in st})
    print("| keys | state (heap allocated) MB | full image MB | thesis checkpoint MB | "
          "bytes / incremental checkpoint (50 ms, 90/10) | stop median / p99 ms | "
          "thesis stop ms | Redis used_memory MB | Redis RDB MB | Redis fork median ms | "
          "Redis BGSAVE s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        h = st.get(("hotspare-kv", n), {})
        r = st.get(("redis", n), {})
        c = h.get("checkpoints", {})
        print(f"| {keys_label(n)} | {mb(h.get('heap_used_bytes'))} | {mb(h.get('full_image_bytes'))} | "
              f"{THESIS_DISK_MB.get(n, '–')} | {mb(c.get('bytes_median'))} | "
              f"{c.get('stop_ms_median', '–')} / {c.get('stop_ms_p99', '–')} | "
              f"{THESIS_STOP_MS.get(n, '–')} | {mb(r.get('used_memory'))} | "
              f"{mb(r.get('rdb_bytes'))} | {r.get('fork_ms', {}).get('median', '–')} | "
              f"{r.get('bgsave_s', {}).get('median', '–')} |")


def serial_table(rows):
    s = {(r["server"], r["interval_ms"]): r for r in rows if r["kind"] == "serial_summary"}
    if not s:
        return
    keys = next(iter(s.values()))["keys"]
    reps = next(iter(s.values()))["reps"]
    secs = next(iter(s.values()))["secs"]
    print(f"{keys_label(keys)} keys, {reps} interleaved repetitions of {secs:g} s each; "
          "median req/s (min–max) and median % lost against the same server without checkpoints.\n")
    print("| interval | hotspare-kv req/s | lost | stop median / p99 ms | Redis req/s | lost | "
          "BGSAVEs run / asked | thesis CheckSync lost | thesis Redis lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    raw = defaultdict(list)
    for r in rows:
        if r["kind"] == "serial":
            raw[(r["server"], r["interval_ms"])].append(r)
    for iv in [50, 500, 1000, 2000, 0]:
        h = s.get(("hotspare-kv", iv))
        r = s.get(("redis", iv))
        if not h or not r:
            continue
        hs_runs = raw[("hotspare-kv", iv)]
        stops = sorted(x.get("stop_ms_median", 0) for x in hs_runs)
        p99s = sorted(x.get("stop_ms_p99", 0) for x in hs_runs)
        mid = lambda v: v[len(v) // 2] if v else 0
        rd_runs = raw[("redis", iv)]
        ran = sum(x.get("bgsave_ran", 0) for x in rd_runs)
        asked = sum(x.get("bgsave_requested", 0) for x in rd_runs)
        t = THESIS_SERIAL.get(iv)
        name = f"{iv} ms" if iv else "none"
        lost = lambda x: "–" if not iv else f"{x['lost_pct']:.1f} %"
        print(f"| {name} | {h['rps']['median']:,.0f} ({h['rps']['min']:,.0f}–{h['rps']['max']:,.0f}) | "
              f"{lost(h)} | {mid(stops) if iv else '–'} / {mid(p99s) if iv else '–'} | "
              f"{r['rps']['median']:,.0f} ({r['rps']['min']:,.0f}–{r['rps']['max']:,.0f}) | {lost(r)} | "
              f"{f'{ran} / {asked}' if iv else '–'} | "
              f"{(str(t[1]) + ' %') if t and t[1] is not None else '–'} | "
              f"{(str(t[3]) + ' %') if t and t[3] is not None else '–'} |")


def multi_table(rows):
    s = [r for r in rows if r["kind"] == "multi_summary"]
    if not s:
        return
    print("| server | checkpoints | GET req/s | GET lost | SET req/s | SET lost |")
    print("|---|---|---|---|---|---|")
    for r in sorted(s, key=lambda r: (r["server"], r["interval_ms"])):
        iv = r["interval_ms"]
        what = ("BGSAVE" if r["server"] == "redis" else "checkpoint") + f" every {iv} ms" if iv else "none"
        def f(op):
            v = r.get(op + "_rps", {})
            med = v.get("median", v) if isinstance(v, dict) else v
            return f"{med:,.0f}"
        def lost(op):
            v = r.get(op + "_lost_pct")
            return "–" if not iv or v is None else f"{v:.1f} %"
        print(f"| {r['server']} | {what} | {f('get')} | {lost('get')} | {f('set')} | {lost('set')} |")


def failover_table(rows):
    s = {r["keys"]: r for r in rows if r["kind"] == "failover_summary"}
    if not s:
        return
    print("| keys | downtime median (min–max) ms | detection ms | restore ms (of which waiting for the dead primary's port) | rest (exec, start, reconnect) ms | "
          "thesis local restore ms | thesis remote total ms | serial req/s, every write durable on the spare |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sorted(s):
        r = s[n]
        d = r["downtime_ms"]
        print(f"| {keys_label(n)} | {d['median']} ({d['min']}–{d['max']}) | {r['detection_ms']['median']} | "
              f"{r['restore_ms']['median']} ({r.get('port_wait_ms', {}).get('median', 0)}) | {r['rest_ms']['median']} | "
              f"{THESIS_RESTORE_MS.get(n, '–')} | {THESIS_REMOTE_MS.get(n, '–')} | "
              f"{r.get('every_write_rps', {}).get('median', '–')} |")
    for f in (r for r in rows if r["kind"] == "failover_failed"):
        print(f"\nFailed run: {f['keys']:,} keys, run {f['run']}: {f['error'].splitlines()[0]}")
    runs = [r for r in rows if r["kind"] == "failover"]
    acked = sum(r["acked_writes"] for r in runs)
    lost = sum(r["lost_writes"] for r in runs)
    print(f"\n{len(runs)} failovers; {acked:,} acknowledged writes checked afterwards, {lost} lost.")


def main():
    rows = load(sys.argv[1] if len(sys.argv) > 1 else "docs/results/kv-bench.jsonl")
    for title, fn in [("Tables 5.2 / 5.3 — state, checkpoint size and stop time", state_table),
                      ("Table 5.4 — serial client, 90 % GET / 10 % SET", serial_table),
                      ("redis-benchmark -c 50", multi_table),
                      ("Tables 5.6 / 5.7 — failover as the client sees it", failover_table)]:
        print(f"### {title}\n")
        fn(rows)
        print()


if __name__ == "__main__":
    main()
