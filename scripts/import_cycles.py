#!/usr/bin/env python3
# Lists import cycles between the modules of src/ (from every `use crate::` and `super::`,
# doc comments and tests left out), per module and per top-level module. Run from the repo root:
#   python3 scripts/import_cycles.py       # prints 'cycles: []' twice when there are none
import re,os,sys,itertools
root='src'
edges={}
def modname(path):
    rel=os.path.relpath(path,root)[:-3]
    parts=rel.split('/')
    if parts[-1]=='mod': parts=parts[:-1]
    if parts==['lib'] or parts==['main']: return None
    return '::'.join(parts)
mods={}
for d,_,fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p=os.path.join(d,f); m=modname(p)
            if m: mods[m]=p
for m,p in mods.items():
    s=open(p).read()
    s=s.split('#[cfg(test)]')[0]
    s='\n'.join(l for l in s.split('\n') if not l.strip().startswith('//'))
    refs=set()
    for r in re.findall(r'crate::((?:[a-z_]+::)*[a-z_]+)',s):
        parts=r.split('::')
        # longest prefix that is a module
        for k in range(len(parts),0,-1):
            cand='::'.join(parts[:k])
            if cand in mods: refs.add(cand); break
    # super:: refs
    for r in re.findall(r'super::([a-z_]+)',s):
        parent=m.rsplit('::',1)[0] if '::' in m else None
        if parent:
            cand=parent+'::'+r
            refs.add(cand if cand in mods else parent)
    refs.discard(m)
    edges[m]=refs
# find cycles (SCCs)
idx={};low={};st=[];on=set();res=[];c=[0]
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges.get(v,()):
        if w not in idx: sc(w); low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: res.append(comp)
sys.setrecursionlimit(10000)
for v in list(edges):
    if v not in idx: sc(v)
print('cycles:',res)
# also at top-level granularity, excluding parent->child declarations
top={}
for m,rs in edges.items():
    a=m.split('::')[0]
    for r in rs:
        b=r.split('::')[0]
        if a!=b: top.setdefault(a,set()).add(b)
edges=top; idx={};low={};st=[];on=set();res=[];c=[0]
for v in list(edges):
    if v not in idx: sc(v)
print('top-level cycles:',res)
