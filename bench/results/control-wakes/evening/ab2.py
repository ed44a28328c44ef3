import json,sys,statistics as st
# per-round ratios, mapping slots to builds by the directory name (new-first: palisade-none = new)
rows=[]
for d in sys.argv[1:]:
    newslot='palisade-none' if 'new-first' in d else 'palisade-none-b'
    oldslot='palisade-none-b' if 'new-first' in d else 'palisade-none'
    data=json.load(open(d+'/results.json'))
    by={}
    for f in data['fixed']:
        m=f['measured']
        if m is None or m.get('overloaded'): continue
        by.setdefault((f['connections'],f['rate'],f['round']),{})[f['system']]=f
    for k,s in sorted(by.items()):
        if not all(x in s for x in (newslot,oldslot,'echo')): continue
        if any((f.get('other_cpus') or 0)+(f.get('stolen_cpus') or 0)>0.25 for f in s.values()): continue
        N,O,E=(s[x]['measured']['requests'] for x in (newslot,oldslot,'echo'))
        rows.append((d.split('/')[-1],N['p99']/E['p99'],O['p99']/E['p99'],N['p99_9']/E['p99_9'],O['p99_9']/E['p99_9'],N['p99']/O['p99'],N['p99_9']/O['p99_9'],E['p99'],E['p99_9']))
byd={}
for r in rows: byd.setdefault(r[0],[]).append(r)
print('| run | rounds | p99/echo new | old | p99.9/echo new | old | new/old p99 | new/old p99.9 | echo p99 µs | echo p99.9 µs |')
def line(name,v):
    med=lambda i: st.median(x[i] for x in v)
    print(f'| {name} | {len(v)} | {med(1):.2f} | {med(2):.2f} | {med(3):.2f} | {med(4):.2f} | {med(5):.2f} | {med(6):.2f} | {med(7):.0f} | {med(8):.0f} |')
for d,v in byd.items(): line(d,v)
line('all',rows)
