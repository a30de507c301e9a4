#!/usr/bin/env python3
"""The issue's performance targets against one `make bench` run, as a markdown table.

Usage: bench_targets.py WORK_DIR WRK_REQUESTS_PER_S STARTUP_MS
WORK_DIR holds the JSON reports of scripts/bench.sh (default-8, default-64, cost4-1, cost4-8,
preload-8). Called by scripts/bench.sh, so that docs/performance.md says where each run stands
without anyone copying figures by hand.
"""
import json
import os
import sys

RUNS = ["default-8", "default-64", "cost4-1", "cost4-8", "preload-8"]
RATIO_TARGETS = {"provision": 1.5, "unbind": 1.5, "deprovision": 1.5, "get-binding": 1.5, "bind": 1.2}


def load(work, name):
    """A run's report, or None when it is missing or unreadable (said on stderr)."""
    path = os.path.join(work, f"{name}.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"bench_targets: skipping {path}: {e}", file=sys.stderr)
        return None


def verdict(ok):
    return "met" if ok else "**missed**"


def main(work, wrk_rps, startup_ms):
    reports = {name: load(work, name) for name in RUNS}
    rows = []
    for op, target in RATIO_TARGETS.items():
        ratios = {
            name: o["p50_ratio"]
            for name, report in reports.items()
            if report
            for o in report["operations"]
            if o["operation"] == op and o.get("p50_ratio") is not None
        }
        if not ratios:
            continue
        worst = max(ratios, key=ratios.get)
        rows.append((
            f"{op} p50 within {target}x of its floor",
            f"{min(ratios.values()):.2f}-{max(ratios.values()):.2f}x (worst: {worst})",
            verdict(ratios[worst] <= target),
        ))
    if wrk_rps:
        rows.append(("catalog >= 32,000 requests/s (wrk -t2 -c32)", f"{float(wrk_rps):,.0f}/s",
                     verdict(float(wrk_rps) >= 32000)))
    empty, large = reports.get("cost4-8"), reports.get("preload-8")
    if empty and large:
        p50 = lambda r: {o["operation"]: o["broker"]["p50_ms"] for o in r["operations"]}
        e, l = p50(empty), p50(large)
        scale = {op: l[op] / e[op] for op in e if op in l and e[op] and l[op]}
        if scale:
            worst = max(scale, key=scale.get)
            rows.append(("preloaded p50 within 1.2x of empty, every operation",
                         f"{min(scale.values()):.2f}-{max(scale.values()):.2f}x (worst: {worst})",
                         verdict(scale[worst] <= 1.2)))
        rss = (large.get("rss_bytes") or {}).get("end")
        if rss:
            rows.append(("broker RSS < 64 MB with the preload", f"{rss / 1e6:.1f} MB", verdict(rss < 64e6)))
    if startup_ms:
        rows.append(("start-up < 1 s with the preload", f"{startup_ms} ms", verdict(int(startup_ms) < 1000)))
    busy = reports.get("default-64")
    if busy:
        errors = sum(o["broker"]["errors"] for o in busy["operations"])
        orphans = len(busy.get("orphans") or [])
        rows.append(("64 clients: no errors, no orphans", f"{errors} errors, {orphans} orphans",
                     verdict(errors == 0 and orphans == 0 and busy.get("orphans") is not None)))
    print("| target | this run | |")
    print("| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
