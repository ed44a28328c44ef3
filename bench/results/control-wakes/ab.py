import json,sys,statistics as st
d=json.load(open(sys.argv[1]+'/results.json'))
by={}
for f in d['fixed']:
    m=f['measured']
    if m is None or m.get('overloaded'): continue
    by.setdefault((f['connections'],f['rate'],f['round']),{})[f['system']]=f
rows={}
for (c,r,rd),s in sorted(by.items()):
    if any((f.get('other_cpus') or 0)+(f.get('stolen_cpus') or 0)>0.25 for f in s.values()): continue
    if not all(k in s for k in ('palisade-none','palisade-none-b','echo')): continue
    A,B,E=(s[k]['measured']['requests'] for k in ('palisade-none','palisade-none-b','echo'))
    rows.setdefault((c,r),[]).append((A['p99']/E['p99'],B['p99']/E['p99'],A['p99_9']/E['p99_9'],B['p99_9']/E['p99_9'],A['p99']/B['p99'],A['p99_9']/B['p99_9'],A['p50']/B['p50']))
print('| conns | arrivals/s | rounds | p99/echo new | old | p99.9/echo new | old | new/old p99 | new/old p99.9 | new/old p50 | new p99 lower in |')
for (c,r),v in rows.items():
    med=lambda i: st.median(x[i] for x in v)
    print(f'| {c} | {r:.0f} | {len(v)} | {med(0):.2f} | {med(1):.2f} | {med(2):.2f} | {med(3):.2f} | {med(4):.2f} | {med(5):.2f} | {med(6):.2f} | {sum(x[4]<1 for x in v)} of {len(v)} |')
