#!/usr/bin/env python3
"""Min / median table of `palisade-bench compare --no-sweep` runs.

Usage: fixed-table.py [--quiet CPUS] LABEL=DIR [LABEL=DIR ...]
Each DIR holds a results.json; a LABEL names the Palisade binary of that
run (its `palisade*` systems are shown as `system (LABEL)`), so runs of
two builds, alternated, fold into one table. Prints, per workload,
connections and rate, the min / median over all rounds of every run of
p99, p99.9 and CPU per request (µs) of each system, and of that CPU the
part a Palisade node spent busy polling, where the run recorded it.

--quiet CPUS leaves out every round in which any system's run at that
workload, connection count and rate had more than CPUS of other work on
the machine, stolen time included (`other_cpus` + `stolen_cpus`, recorded
since 054fd99): whole rounds, so
that every system keeps the same rounds. It says how many it left out.

A run cut short (the server pushed back, `measured.overloaded`) or with
requests unanswered is not a latency: it is left out of the min and
median and listed at the end, as the compare report flags it.
"""
import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)
systems = []
args = sys.argv[1:]
quiet = None
if args[:1] == ["--quiet"]:
    quiet = float(args[1])
    args = args[2:]
dropped = set()
cut_short = []
for arg in args:
    label, path = arg.split("=", 1)
    data = json.load(open(f"{path}/results.json"))
    noisy = set()
    if quiet is not None:
        for cell in data["fixed"]:
            other = cell.get("other_cpus")
            if other is not None and other + (cell.get("stolen_cpus") or 0.0) > quiet:
                noisy.add((cell["workload"], cell["connections"], cell["rate"], cell["round"]))
        dropped |= {(path,) + n for n in noisy}
    for cell in data["fixed"]:
        if (cell["workload"], cell["connections"], cell["rate"], cell["round"]) in noisy:
            continue
        if cell.get("error"):
            continue
        name = cell["system"]
        if name.startswith("palisade"):
            name = f"{name} ({label})"
        if name not in systems:
            systems.append(name)
        measured = cell["measured"]
        if measured.get("overloaded") or measured.get("unanswered"):
            why = measured.get("overloaded") or f"{measured['unanswered']} unanswered"
            cut_short.append(f"{name} {cell['workload']} x{cell['connections']} at {cell['rate']:.0f}/s round {cell['round']} ({why})")
            continue
        m = measured["requests"]
        key = (cell["workload"], cell["connections"], int(cell["rate"]), name)
        rows[key].append((m["p99"], m["p99_9"], cell["cpu_us_per_request"],
                          cell.get("busy_poll_us_per_request")))


def mm(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{min(values):.1f} / {statistics.median(values):.1f}"


if not rows:
    sys.exit("fixed-table.py: no measured runs left" + (f" (--quiet {quiet} left out {len(dropped)} rounds)" if quiet is not None else ""))
cells = sorted({k[:3] for k in rows})
tables = [("p99 (µs)", 0), ("p99.9 (µs)", 1), ("CPU per request (µs)", 2)]
if any(r[3] is not None for rs in rows.values() for r in rs):
    tables.append(("of that CPU, busy polling (µs per request)", 3))
for what, index in tables:
    print(f"\n### {what}, min / median of the rounds\n")
    print("| workload | conns | arrivals/s | " + " | ".join(systems) + " |")
    print("|---|---|---|" + "---|" * len(systems))
    for workload, conns, rate in cells:
        values = [mm([r[index] for r in rows.get((workload, conns, rate, s), [])]) for s in systems]
        rounds = max(len(rows.get((workload, conns, rate, s), [])) for s in systems)
        print(f"| {workload} | {conns} | {rate:,} | " + " | ".join(values) + " |")
    print(f"\n(rounds per cell: up to {rounds})")
if quiet is not None:
    print(f"\n(--quiet {quiet}: {len(dropped)} noisy round(s) left out: "
          + (", ".join(f"{w} x{c} at {r:.0f}/s round {n} of {p}" for p, w, c, r, n in sorted(dropped)) or "none")
          + ")")
if cut_short:
    print(f"\n(not sustained, left out: {'; '.join(cut_short)})")
