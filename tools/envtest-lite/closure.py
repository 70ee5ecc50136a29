#!/usr/bin/env python3
"""Resolve what build.sh must download from a Debian `Packages` index.

usage: closure.py PACKAGES_FILE ARCH ROOT_PKG... > list

Prints one `name=version` per line:
  * the transitive closure of Go source packages (golang-*-dev) needed by ROOT_PKGs,
    following only golang-*-dev dependencies (C libraries, tzdata etc. are not needed
    because the build uses CGO_ENABLED=0);
  * the default Go toolchain of that suite (whatever `golang-go` depends on, e.g.
    golang-1.27-go) plus its matching golang-1.NN-src.
A summary goes to stderr. Exits non-zero if a dependency cannot be resolved.
"""

import re
import sys


def parse(path, arch):
    pkgs, provides = {}, {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for stanza in f.read().split("\n\n"):
            d, key = {}, None
            for line in stanza.splitlines():
                if line[:1] in (" ", "\t") and key:  # continuation line
                    d[key] += " " + line.strip()
                elif ":" in line:
                    key, val = line.split(":", 1)
                    d[key] = val.strip()
            if "Package" not in d or d.get("Architecture") not in ("all", arch):
                continue
            pkgs.setdefault(d["Package"], d)
            for p in d.get("Provides", "").split(","):
                p = p.strip().split(" ")[0]
                if p:
                    provides.setdefault(p, d["Package"])
    return pkgs, provides


def depends(d):
    """First alternative of each Depends entry, without version/arch qualifiers."""
    for entry in d.get("Depends", "").split(","):
        entry = entry.strip()
        if entry:
            yield entry.split("|")[0].strip().split(" ")[0].split(":")[0]


def is_go_source(name):
    return name.startswith("golang-") and name.endswith("-dev") and not re.match(r"golang-1\.\d+", name)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    pkgs, provides = parse(sys.argv[1], sys.argv[2])
    if not pkgs:
        sys.exit(f"closure.py: no packages for arch {sys.argv[2]} in {sys.argv[1]}")

    seen, missing, stack = set(), set(), list(sys.argv[3:])
    while stack:
        name = stack.pop()
        name = name if name in pkgs else provides.get(name, name)
        if name in seen:
            continue
        if name not in pkgs:
            missing.add(name)
            continue
        seen.add(name)
        stack.extend(n for n in depends(pkgs[name]) if is_go_source(n))

    # Go toolchain: golang-go -> golang-1.NN-go (+ golang-1.NN-src for GOROOT/src)
    go = next((n for n in depends(pkgs.get("golang-go", {})) if re.fullmatch(r"golang-1\.\d+-go", n)), None)
    if not go:
        missing.add("golang-go -> golang-1.NN-go")
    else:
        seen |= {go, go[:-3] + "-src"}
        missing |= {n for n in (go, go[:-3] + "-src") if n not in pkgs}

    if missing:
        sys.exit(f"closure.py: unresolved packages: {sorted(missing)}")
    for name in sorted(seen):
        print(f"{name}={pkgs[name]['Version']}")
    mib = sum(int(pkgs[n].get("Installed-Size", 0)) for n in seen) // 1024
    print(f"closure: {len(seen)} packages, ~{mib} MiB unpacked, toolchain {go}", file=sys.stderr)


if __name__ == "__main__":
    main()
