"""Maintainer tool: ``python -m linkedout.samples --write-manifest`` regenerates ``samples.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from linkedout.samples import MANIFEST_PATH, write_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description="Regenerate linkedout/samples/samples.json from the registries.")
    ap.add_argument("--write-manifest", action="store_true", required=True)
    ap.add_argument("--out", type=Path, default=MANIFEST_PATH)
    args = ap.parse_args()
    write_manifest(args.out)


if __name__ == "__main__":  # pragma: no cover - maintainer tool (downloads ~300 MB)
    main()
