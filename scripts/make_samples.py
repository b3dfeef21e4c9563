"""Write the sample images bundled in ``src/vistok/samples`` from packages that carry them offline.

Run once by maintainers: ``python scripts/make_samples.py`` (needs scikit-image and matplotlib).
Every image is public domain or CC0; SOURCES.md beside them records where each came from.
"""

from pathlib import Path

import matplotlib.cbook
import skimage.data
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "src" / "vistok" / "samples"

SAMPLES = {
    "astronaut": (skimage.data.astronaut, "scikit-image `astronaut`: NASA portrait of Eileen Collins, public domain"),
    "chelsea": (skimage.data.chelsea, "scikit-image `chelsea`: CC0, photographer Stefan van der Walt"),
    "coffee": (skimage.data.coffee, "scikit-image `coffee`: CC0, photographer Rachel Michetti"),
    "rocket": (skimage.data.rocket, "scikit-image `rocket`: SpaceX, released into the public domain"),
    "hubble": (skimage.data.hubble_deep_field, "scikit-image `hubble_deep_field`: NASA, public domain"),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["# Bundled sample images", "", "Re-created by `scripts/make_samples.py`.", ""]
    for name, (loader, note) in SAMPLES.items():
        Image.fromarray(loader()).save(OUT / f"{name}.jpg", quality=92)
        lines.append(f"- `{name}.jpg`: {note}")
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        Image.open(handle).convert("RGB").save(OUT / "grace_hopper.jpg", quality=92)
    lines.append("- `grace_hopper.jpg`: matplotlib sample data, U.S. Navy photograph, public domain")
    (OUT / "SOURCES.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(SAMPLES) + 1} samples to {OUT}")


if __name__ == "__main__":
    main()
