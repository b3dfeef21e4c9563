"""``python -m vistok.samples [FOLDER]``: copy the bundled sample images into FOLDER (default ``vistok-samples``),
so that the examples in the documentation have real photos to work on."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from vistok.samples import sample_images

USAGE = "usage: python -m vistok.samples [FOLDER]  (copies the bundled sample images into FOLDER)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0
    if len(args) > 1:
        print(f"error: expected one folder, got {len(args)} arguments; {USAGE}", file=sys.stderr)
        return 2
    folder = Path(args[0] if args else "vistok-samples")
    if folder.exists() and not folder.is_dir():
        print(f"error: {folder} exists and is not a folder; name a new or existing folder", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    images = sample_images()
    for path in images:
        shutil.copyfile(path, folder / path.name)
    print(f"copied {len(images)} sample images to {folder}/: {', '.join(p.name for p in images)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
