"""numpy/OpenBLAS on issue 3's linear-layer shapes, one thread: x·Wᵀ, dY·W, dYᵀ·x (min and median
of 40, three rounds). Usage: /work/venv-torch/bin/python benches/compare/linear_numpy.py"""
import os
os.environ["OPENBLAS_NUM_THREADS"]="1"
import numpy as np, time, statistics as st
rng=np.random.default_rng(0)
x=rng.standard_normal((2048,256),dtype=np.float32); w=rng.standard_normal((1024,256),dtype=np.float32); dy=rng.standard_normal((2048,1024),dtype=np.float32)
def t(f,n=40):
    f(); ts=[]
    for _ in range(n):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    return min(ts)*1e3, st.median(ts)*1e3
res={}
for r in range(3):
  for name,f in [("fwd",lambda: x@w.T),("dx",lambda: dy@w),("dw",lambda: dy.T@x)]:
    res.setdefault(name,[]).append(t(f))
for k,v in res.items(): print(k, ["%.2f/%.2f"%a for a in v])
f=min(a[0] for a in res['fwd']); print("bwd/fwd (min):", (min(a[0] for a in res['dx'])+min(a[0] for a in res['dw']))/f)
