import sys
for path in sys.argv[1:]:
    main=[];core=[]
    for line in open(path):
        f=line.split()
        if len(f)<6: continue
        name=f[2]
        try:
            wait,sch,run=float(f[-3]),float(f[-2]),float(f[-1])
        except ValueError: continue
        if name.startswith('palisade-') and not name.startswith('palisade-core'): main.append(sch)
        if name.startswith('palisade-core-0'): core.append(run)
    def q(xs,p):
        xs=sorted(xs); return xs[min(len(xs)-1,int(p*len(xs)))] if xs else 0
    print("%s control sch delay: n %d p99 %.3f p99.9 %.3f max %.3f ms; >0.5ms %d; >1ms %d; >2ms %d | core runs >0.8ms %d max %.3f"%(
      path.split('/')[-1],len(main),q(main,.99),q(main,.999),max(main or [0]),sum(x>0.5 for x in main),sum(x>1 for x in main),sum(x>2 for x in main),
      sum(x>0.8 for x in core),max(core or [0])))
