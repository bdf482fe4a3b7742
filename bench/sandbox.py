"""pyrepl3 with and without its sandbox, side by side (bench/README.md, "Sandbox cost").

Owns: starting two pyrepl3 bench drivers, one plain and one whose sessions are sandboxed
(`PYREPL3_BENCH_SANDBOX=1`), running the cases that the sandbox can cost (cold start, the
`1+1` round trip, a warm pool acquire, memory) on both in alternating rounds, and the
report: p50 of each side, the difference and the ratio. Reuses compare.py's driver protocol
and statistics.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

CASES = {  # full, quick
    "cold_start": (compare.Plan(10, 3), compare.Plan(3, 2)),
    "roundtrip": (compare.Plan(10, 200), compare.Plan(10, 40)),
    "pool_acquire": (compare.Plan(10, 200), compare.Plan(10, 40)),
    "memory": (compare.Plan(1, 1, once=True), compare.Plan(1, 1, once=True)),
}


def p50(side: compare.Side) -> float | None:
    s = compare.stats(side.samples)
    return s["p50"] if s else None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    python = os.path.abspath(sys.executable)
    binary = os.path.join(compare.ROOT, "target", "release", "examples", "bench_driver")
    logs = tempfile.mkdtemp(prefix="pyrepl3-bench-sandbox-")
    drivers = [
        compare.Driver("plain", ["env", "PYREPL3_BENCH_SANDBOX=0", binary], os.path.join(logs, "plain.log")),
        compare.Driver("sandbox", ["env", "PYREPL3_BENCH_SANDBOX=1", binary], os.path.join(logs, "sandbox.log")),
    ]
    results = {}
    try:
        for d in drivers:
            d.start(python)
        for case, plans in CASES.items():
            results[case] = compare.run_case(case, plans[1 if args.quick else 0], drivers, 0.0)
    finally:
        for d in drivers:
            d.stop()
    host = compare.host_info()
    print(f"# pyrepl3 sandbox cost ({'quick' if args.quick else 'full'} run)\n")
    import datetime
    print(f"{datetime.date.today()} on {host['summary']}; python {os.path.realpath(python)}\n")
    print("| case (p50) | without sandbox | with sandbox | difference | ratio |")
    print("|---|---|---|---|---|")
    for case in ("cold_start", "roundtrip", "pool_acquire"):
        plain, boxed = (p50(results[case][d.label]) for d in drivers)
        if plain is None or boxed is None:
            errors = [results[case][d.label].error for d in drivers]
            print(f"| {case} | error | error | {errors} | |")
            continue
        print(f"| {case} | {compare.fmt_time(plain)} | {compare.fmt_time(boxed)} | "
              f"{(boxed - plain) * 1e3:+.2f} ms | {boxed / plain:.2f}x |")
    bare = compare.stats(results["cold_start"]["plain"].extra.get("bare", []))
    if bare:
        print(f"| (bare `python -c pass`) | {compare.fmt_time(bare['p50'])} | | | |")
    mem = {d.label: results["memory"][d.label].extra for d in drivers}
    for key in ("worker_rss", "host_per_session"):
        plain, boxed = mem["plain"].get(key), mem["sandbox"].get(key)
        if isinstance(plain, (int, float)) and isinstance(boxed, (int, float)):
            print(f"| memory: {key} | {compare.fmt_bytes(plain)} | {compare.fmt_bytes(boxed)} | "
                  f"{compare.fmt_bytes(boxed - plain)} | {boxed / plain:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
