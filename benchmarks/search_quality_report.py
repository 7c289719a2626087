#!/usr/bin/env python
"""Print the summary.md of a pair's ``summary.json`` (``hf_revdarts.protocol.report.markdown``):

    python benchmarks/search_quality_report.py benchmarks/results/en-de

To rebuild the summary itself (and overview.md) from the run records, with every paired bootstrap:
``python benchmarks/search_quality.py --pair en-de --report``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hf_revdarts.protocol.report import markdown


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0]) / "summary.json"
    if not path.is_file():
        raise SystemExit(f"no summary.json in {argv[0]}: run benchmarks/search_quality.py for that pair first")
    print(markdown(json.loads(path.read_text(encoding="utf-8"))), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
