"""Fingerprint of every registered perturbation's output, to compare two software stacks.

For each perturbation that accepts the images, at every severity, the SHA-256 of the uint8
output on real MedMNIST test images (BreastMNIST grayscale, and PathMNIST-like RGB made from
BreastMNIST by a fixed tint where no RGB file is at hand), and the outputs themselves in an
npz so that a differing hash can be measured (maximum grey-level change, share of pixels
changed). Run once per stack and compare::

    PYTHONPATH=src .venv/bin/python bench/perturbation_hashes.py --out /tmp/old
    PYTHONPATH=src /other/venv/bin/python bench/perturbation_hashes.py --out /tmp/new
    PYTHONPATH=src .venv/bin/python bench/perturbation_hashes.py --compare /tmp/old /tmp/new
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "medmnist"
N_IMAGES = 16
SEED = 42


def test_images(data: Path) -> dict[str, np.ndarray]:
    with np.load(data / "breastmnist.npz") as npz:
        gray = npz["test_images"][:N_IMAGES]
    tint = np.array([0.95, 0.55, 0.75])  # an H&E-like pink, fixed
    rgb = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
    return {"gray": gray, "rgb": rgb}


def fingerprint(out: Path, data: Path) -> None:
    import imgaug

    from saliency_robustness.perturbations.apply import perturb_images
    from saliency_robustness.perturbations.registry import PERTURBATIONS, SEVERITIES

    out.mkdir(parents=True, exist_ok=True)
    hashes, arrays = {}, {}
    for kind, images in test_images(data).items():
        channels = 1 if images.ndim == 3 else 3
        for name, spec in sorted(PERTURBATIONS.items()):
            if channels not in spec.channels:
                continue
            for severity in SEVERITIES:
                result = perturb_images(images, name, severity, SEED)
                key = f"{kind}/{name}/{severity}"
                hashes[key] = hashlib.sha256(result.tobytes()).hexdigest()
                arrays[key.replace("/", "__")] = result
    versions = {"numpy": np.__version__, "imgaug": imgaug.__version__}
    try:
        import cv2

        versions["opencv"] = cv2.__version__
    except ImportError:
        pass
    (out / "hashes.json").write_text(json.dumps({"versions": versions, "hashes": hashes}, indent=1))
    np.savez_compressed(out / "outputs.npz", **arrays)
    print(f"{len(hashes)} outputs fingerprinted with {versions} into {out}")


def compare(old: Path, new: Path) -> None:
    a = json.loads((old / "hashes.json").read_text())
    b = json.loads((new / "hashes.json").read_text())
    print(f"old: {a['versions']}\nnew: {b['versions']}")
    same = [k for k in a["hashes"] if b["hashes"].get(k) == a["hashes"][k]]
    differ = [k for k in a["hashes"] if k in b["hashes"] and k not in same]
    missing = sorted(set(a["hashes"]) ^ set(b["hashes"]))
    print(f"{len(same)} of {len(a['hashes'])} outputs identical; {len(differ)} differ")
    if missing:
        print(f"only in one: {missing}")
    with np.load(old / "outputs.npz") as x, np.load(new / "outputs.npz") as y:
        for key in differ:
            name = key.replace("/", "__")
            diff = np.abs(x[name].astype(int) - y[name].astype(int))
            changed = np.mean(diff > 0)
            print(f"  {key}: max grey-level change {diff.max()}, pixels changed {changed:.4%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        fingerprint(args.out, args.data)
