#!/usr/bin/env python3
"""Ordering guards over generated PTX that the kernel simulator cannot give.

The simulator runs the kernels as C++: it treats fences as no-ops and reads a
wgmma operand when the product is waited for, so two ordering rules of the
Hopper async proxy are invisible to it. This checks them on the sm_90a PTX
that NVRTC produced, in every entry point that issues `wgmma.mma_async`:

1. *Register fence.* Every `wgmma.mma_async` follows a `wgmma.fence` with no
   `wgmma.commit_group` in between: accumulator registers written by normal
   instructions must be fenced before a wgmma group reads them.
2. *Proxy fence.* Shared memory written through the generic proxy (`st.shared`,
   `stmatrix`, shared atomics, or `cp.async` copies, which land at
   `cp.async.wait_*`) and then published by a barrier must be fenced with
   `fence.proxy.async` before that barrier when the next thing to read it is
   a wgmma (the async proxy). Checked as: the last barrier before a
   `wgmma.mma_async` must not follow a generic shared write that no
   `fence.proxy.async` ordered.

The scan follows the PTX text in order, the order in which NVRTC lays out the
structured loops of these kernels (a loop body's barrier, fence and products
appear in program order, the back edge returns to the top). `--self-test`
proves the guard can fail: it deletes, one at a time, every `wgmma.fence` and
every `fence.proxy.async` of the wgmma entries and requires an error for each
deletion.

Usage: ptx_guards.py FILE.ptx [--self-test]; exit 1 on a violation.
"""

from __future__ import annotations

import re
import sys

ENTRY = re.compile(r"^\.visible \.entry (\w+)\(")
GENERIC_SMEM_WRITE = re.compile(
    r"^\s*(?:@!?%p\d+\s+)?(?:st\.shared|stmatrix|atom\.shared|red\.shared|cp\.async\.wait_group|cp\.async\.wait_all)"
)
BARRIER = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:bar\.sync|barrier\.sync|bar\.red|barrier\.cta\.sync)")


def entries(lines: list[str]) -> list[tuple[str, int, int]]:
    """(name, first line, one past the last line) of each entry point."""
    out = []
    i = 0
    while i < len(lines):
        m = ENTRY.match(lines[i])
        if not m:
            i += 1
            continue
        depth, j, opened = 0, i, False
        while j < len(lines):
            depth += lines[j].count("{") - lines[j].count("}")
            opened = opened or "{" in lines[j]
            j += 1
            if opened and depth == 0:
                break
        out.append((m.group(1), i, j))
        i = j
    return out


def check_entry(name: str, body: list[str]) -> list[str]:
    """The violations of the two rules in one entry point's PTX."""
    errors: list[str] = []
    fenced = False  # a wgmma.fence since the last commit_group
    dirty = False  # a generic shared write since the last proxy fence
    published_unfenced = False  # the last barrier published such a write
    last_barrier = 0
    for n, line in enumerate(body):
        s = line.strip()
        if "wgmma.fence" in s:
            fenced = True
        elif "wgmma.commit_group" in s:
            fenced = False
        elif "wgmma.mma_async" in s:
            if not fenced:
                errors.append(f"{name}: line +{n}: wgmma.mma_async without a preceding wgmma.fence")
                fenced = True  # one report per group
            if published_unfenced:
                errors.append(
                    f"{name}: line +{n}: wgmma.mma_async after the barrier at +{last_barrier}, which "
                    "publishes generic-proxy shared writes no fence.proxy.async ordered"
                )
                published_unfenced = False
        elif s.startswith("fence.proxy.async"):
            dirty = False
        elif GENERIC_SMEM_WRITE.match(line):
            dirty = True
        elif BARRIER.match(line):
            published_unfenced = dirty
            last_barrier = n
    return errors


def check(lines: list[str]) -> tuple[int, list[str]]:
    """(number of wgmma entries checked, violations) over a whole PTX file."""
    errors: list[str] = []
    checked = 0
    for name, a, b in entries(lines):
        body = lines[a:b]
        if not any("wgmma.mma_async" in l for l in body):
            continue
        checked += 1
        errors += check_entry(name, body)
    return checked, errors


def self_test(lines: list[str]) -> list[str]:
    """Deletes each guarded fence in turn; returns the deletions not caught."""
    missed = []
    targets = [
        i
        for name, a, b in entries(lines)
        if any("wgmma.mma_async" in l for l in lines[a:b])
        for i in range(a, b)
        if "wgmma.fence" in lines[i] or lines[i].strip().startswith("fence.proxy.async")
    ]
    if not targets:
        return ["no wgmma.fence or fence.proxy.async found to delete"]
    for i in targets:
        mutated = lines[:i] + lines[i + 1 :]
        if not check(mutated)[1]:
            missed.append(f"deleting line {i + 1} ({lines[i].strip()}) went unnoticed")
    print(f"ptx guards self-test: {len(targets) - len(missed)} of {len(targets)} fence deletions caught")
    return missed


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    lines = open(args[0]).read().splitlines()
    checked, errors = check(lines)
    if checked == 0:
        errors.append("no entry point issues wgmma.mma_async: nothing was checked")
    if "--self-test" in sys.argv:
        errors += self_test(lines)
    for e in errors:
        print("FAIL:", e)
    if not errors:
        print(f"ptx guards: {checked} wgmma entry points, every product fenced, every async-proxy read published")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
