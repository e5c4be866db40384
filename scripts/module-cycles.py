#!/usr/bin/env python3
"""Module cycles among the files of each crate (issue 17): prints each strongly connected set of
files that import one another (`crate::x` / `super::x` paths outside comments and test modules).

    python3 scripts/module-cycles.py      # from the repository root; exit 1 if any cycle
"""
import re
import sys
from pathlib import Path

CRATES = ["kernels", "crates/autograd", "crates/model", "crates/cli"]


def module_of(src, path):
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def code_of(path):
    text = path.read_text()
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)[0]
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def graph(crate):
    src = Path(crate) / "src"
    mods = {"::".join(module_of(src, f)): f for f in src.rglob("*.rs")}
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        here = m.split("::") if m else []
        for kind, path in re.findall(r"\b(crate|super)::([a-z_0-9]+(?:::[a-z_0-9]+)*)", code_of(f)):
            base = [] if kind == "crate" else here[:-1]
            parts = base + path.split("::")
            for i in range(len(parts), 0, -1):
                target = "::".join(parts[:i])
                if target in mods:
                    if target != m and not m.startswith(target + "::") and target:
                        edges[m].add(target)
                    break
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


found = False
for crate in CRATES:
    for comp in cycles(graph(crate)):
        found = True
        print(f"{crate}: {' <-> '.join(comp)}")
if not found:
    print("no module cycles")
sys.exit(1 if found else 0)
