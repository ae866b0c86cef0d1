"""Sums a callgrind dump's instructions by the object they ran in (self cost, calls excluded):

    python3 benches/python/callgrind_objects.py callgrind.out.1234.1 [REQUESTS]

Prints one line per object, largest first, with instructions per request when REQUESTS is given.
Code a JIT compiler wrote to anonymous memory (wasmtime's compiled guest) has no object file:
callgrind names it `???`.
"""

import collections
import os
import sys


def objects(path):
    names = {}  # "(id)" -> name, callgrind's name compression
    totals = collections.Counter()
    current = "???"
    after_calls = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                current = resolve(names, line[3:].strip())
            elif line.startswith(("cob=", "cfi=", "cfl=", "cfn=")):
                if line.startswith("cob="):
                    resolve(names, line[4:].strip())
            elif line.startswith("calls="):
                after_calls = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_calls:
                    after_calls = False  # an inclusive call cost, counted in the callee
                    continue
                fields = line.split()
                if len(fields) >= 2:
                    totals[current] += int(fields[1])
    return totals


def resolve(names, spec):
    if spec.startswith("("):
        ident, _, name = spec.partition(")")
        ident += ")"
        name = name.strip()
        if name:
            names[ident] = name
        return names.get(ident, ident)
    return spec or "???"


def main():
    totals = objects(sys.argv[1])
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    grand = sum(totals.values())
    for name, count in totals.most_common():
        if count * 200 < grand:
            continue  # under 0.5 %
        per = f"{count / requests:12,.0f} per request" if requests else ""
        print(f"{count / grand:6.1%} {per}  {os.path.basename(name)}")
    if requests:
        print(f"{'100%':>6} {grand / requests:12,.0f} per request  all")


if __name__ == "__main__":
    main()
