#!/usr/bin/env python3
"""Per-round ratios of a `palisade-bench compare --no-sweep` run with systems
palisade-none, echo and redis: for each cell, the median over its rounds of
palisade-none's p99 / echo's, p99.9 / echo's, p99 / Redis's and CPU per
request / Redis's (each ratio taken within one round, so that the machine's
drift between rounds cancels), and how many rounds had p99.9 within 1.5x the
echo's. Rounds in which any system's run had more than QUIET CPUs of other
work (other_cpus + stolen_cpus) are left out, as `fixed-table.py --quiet`.

Usage: per-round-ratios.py DIR [QUIET]
Prints markdown rows: | conns | arrivals/s | rounds | p99/echo | p99.9/echo |
p99/redis | CPU/redis | rounds with p99.9 <= 1.5x echo |
"""
import json,sys,statistics as st
d=json.load(open(sys.argv[1]+'/results.json')); quiet=float(sys.argv[2]) if len(sys.argv)>2 else None
by={}
for f in d['fixed']:
    m=f['measured']
    if m is None or m.get('overloaded'): continue
    by.setdefault((f['connections'],f['rate'],f['round']),{})[f['system']]=f
def noisy(f):
    o=f.get('other_cpus'); s=f.get('stolen_cpus') or 0
    return o is not None and o+s>quiet
rows={}
for (c,r,rd),s in sorted(by.items()):
    if quiet is not None and any(noisy(f) for f in s.values()): continue
    if not all(k in s for k in ('palisade-none','echo','redis')): continue
    P,E,R=(s[k]['measured'] for k in ('palisade-none','echo','redis'))
    rows.setdefault((c,r),[]).append((P['requests']['p99']/E['requests']['p99'], P['requests']['p99_9']/E['requests']['p99_9'], P['requests']['p99']/R['requests']['p99'], s['palisade-none']['cpu_us_per_request']/s['redis']['cpu_us_per_request'] if s['palisade-none'].get('cpu_us_per_request') else float('nan'), P['requests']['p99_9']<=1.5*E['requests']['p99_9']))
for (c,r),v in rows.items():
    med=lambda i: st.median(x[i] for x in v)
    print(f"| {c} | {int(r)} | {len(v)} | {med(0):.2f} | {med(1):.2f} | {med(2):.2f} | {med(3):.2f} | {sum(x[4] for x in v)} |")
