import json,sys,statistics
from collections import defaultdict
d=json.load(open(sys.argv[1]+"/results.json"))
a,b,floor,q=sys.argv[2],sys.argv[3],sys.argv[4],float(sys.argv[5])
cells=defaultdict(dict)
for c in d["fixed"]:
    if c.get("error") or not c.get("measured"): continue
    n=(c.get("other_cpus") or 0)+(c.get("stolen_cpus") or 0)
    cells[(c["connections"],int(c["rate"]),c["round"])][c["system"]]=(c["measured"]["requests"]["p99"],n,c["cpu_us_per_request"])
out=defaultdict(list)
for k,s in sorted(cells.items()):
    if all(x in s for x in (a,b,floor)) and max(v[1] for v in s.values())<=q:
        out[k[:2]].append((s[b][0]/s[a][0], s[a][0]/s[floor][0], s[b][0]/s[floor][0], s[a][0], s[b][0], s[floor][0]))
for k,v in sorted(out.items()):
    med=lambda i: statistics.median([x[i] for x in v])
    print(f"x{k[0]} {k[1]}/s quiet rounds {len(v)}: {b}/{a} p99 median {med(0):.2f} [" + " ".join(f"{x[0]:.2f}" for x in v) + f"]; vs {floor}: {med(1):.2f} / {med(2):.2f}; p99 medians {med(3):.0f} / {med(4):.0f} / {med(5):.0f}")
