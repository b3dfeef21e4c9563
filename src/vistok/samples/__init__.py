"""Sample images that ship with vistok (public domain or CC0; see SOURCES.md beside them)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["sample_images"]


def sample_images() -> list[Path]:
    """Paths of the bundled sample images, sorted by name."""
    folder = Path(str(resources.files(__name__)))
    return sorted(p for p in folder.iterdir() if p.suffix in {".jpg", ".png"})
