import sys,re,statistics as st
r={}
for l in sys.stdin:
    m=re.match(r'(\d+) (\w+) fdatasync p99 (\d+) µs, round trip p99 (\d+) µs \|\s+p99 ([\d.]+) p99.9 ([\d.]+)',l)
    if not m: continue
    b=m.group(2); f,rt,p99,p999=int(m.group(3)),int(m.group(4)),float(m.group(5)),float(m.group(6))
    bound=2*(f+rt); r.setdefault(b,[]).append((p99,p99/bound,p999))
for b,v in r.items():
    ratios=sorted(x[1] for x in v); p99s=sorted(x[0] for x in v)
    print(b,'rounds',len(v),'p99 min/median %.0f/%.0f'%(p99s[0],st.median(p99s)),'ratio to bound min/median %.2f/%.2f'%(ratios[0],st.median(ratios)),'within bound',sum(x<=1 for x in ratios))
