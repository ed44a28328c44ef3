import sys,re,statistics as st
conns=sys.argv[1] if len(sys.argv)>1 else '1'
rows={}
for l in sys.stdin:
    m=re.match(r'\s+(\S+) uncontended x'+conns+r': 100000/s: p99 ([\d.]+) p99.9 ([\d.]+)',l)
    if not m: continue
    s=m.group(1); rows.setdefault(s,[]).append((float(m.group(2)),float(m.group(3))))
for s,v in rows.items():
    p=[x[0] for x in v]; q=[x[1] for x in v]
    print(s,'rounds',len(v),'p99 min/med %.0f/%.0f'%(min(p),st.median(p)),'p99.9 min/med %.0f/%.0f'%(min(q),st.median(q)))
e=[x[0] for x in rows['echo']]; e9=[x[1] for x in rows['echo']]
for s in ['palisade-none','palisade-none-b','echo-epoll']:
    r=[a[0]/b for a,b in zip(rows[s],e)]
    r9=[a[1]/b for a,b in zip(rows[s],e9)]
    print(s,'p99/echo: median of per-round ratios %.2f, min/min %.2f, med/med %.2f'%(st.median(r),min(x[0] for x in rows[s])/min(e),st.median([x[0] for x in rows[s]])/st.median(e)),
      '| p99.9/echo: median of ratios %.2f'%st.median(r9))
