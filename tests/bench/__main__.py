"""`python -m tests.bench [FILTER ...]`: run every tests/bench/bench_*.py and print its section.

Modules run in name order; with arguments, only modules whose name contains one of them.
A module that fails is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def modules(filters: list[str]) -> list[str]:
    here = Path(__file__).resolve().parent
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    return [n for n in names if not filters or any(f in n for f in filters)]


def main(argv: list[str]) -> int:
    selected = modules(argv)
    if not selected:
        print(f"no benchmark matches {' '.join(argv)!r}", file=sys.stderr)
        return 2
    failed = 0
    for name in selected:
        print(f"<!-- {name}: running -->", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            section = importlib.import_module(f"{__package__ or 'tests.bench'}.{name}").run()
        except Exception:
            failed += 1
            print(f"<!-- {name}: FAILED -->\n```\n{traceback.format_exc()}```\n", flush=True)
            continue
        print(section.rstrip() + "\n", flush=True)
        print(f"<!-- {name}: {time.monotonic() - t0:.0f} s -->", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
