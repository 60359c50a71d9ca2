#!/usr/bin/env python3
"""Write a synthetic "shapes" dataset (pictures + captions.csv + attributes.csv).

The generator lives in ``indexer/shapes.py``; this is its command line::

    python scripts/make_synthetic_dataset.py --seed 1234 --count 200 --out /tmp/shapes
"""

from __future__ import annotations

import argparse
from pathlib import Path

from indexer.shapes import make_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out = make_dataset(args.out, args.seed, args.count)
    print(f"wrote {args.count} images to {out}")


if __name__ == "__main__":
    main()
