"""Train dn's small demo generator: a chromogen swap (DAB brown → AEC red) on real IHC tissue.

The data is scikit-image's ``immunohistochemistry()`` photograph (real tissue, haematoxylin +
DAB). The target is defined by colour deconvolution: the haematoxylin and DAB optical densities
(``rgb2hed``) are re-rendered with haematoxylin + AEC stain vectors (``rgb_from_hax``), i.e.
what the slide would look like had the antibody been revealed with AEC instead of DAB. The
left three quarters of the image train, the right quarter is held out. Half the training crops
come from that part laid on a glass-coloured background with a soft outline, so the model also
learns to leave empty glass alone (under InstanceNorm a near-flat tile is amplified noise).
Seeded; minutes on a CPU.

    python scripts/train_demo_model.py --out dn_cli/models/weights/dab2aec_resnet_ngf16.pth

``--target he`` trains the second supervised model of the fidelity benchmark
(``scripts/fidelity.py``) the same way: the DAB density re-rendered as eosin (H&E stain
vectors), a re-stain whose true output is known for every pixel.

    python scripts/train_demo_model.py --target he --out scripts/weights/dab2he_resnet_ngf16.pth
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import skimage.color
import skimage.data
import skimage.filters
import torch
import torch.nn.functional as F

from dn_cli.models.resnet import ResnetGenerator

TRAIN_COLUMNS = 384  # of 512: columns right of this are held out
GLASS = np.array([241.0, 240.0, 245.0])


def on_glass(tissue: np.ndarray, rng: np.random.Generator, pad: int = 192) -> np.ndarray:
    """``tissue`` with a soft elliptic outline on a noisy glass background ``pad`` pixels wide."""
    h, w = tissue.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    inside = ((y - h / 2) / (0.48 * h)) ** 2 + ((x - w / 2) / (0.48 * w)) ** 2 < 1
    alpha = skimage.filters.gaussian(inside.astype(float), sigma=4)[..., None]
    canvas = np.broadcast_to(GLASS, (h + 2 * pad, w + 2 * pad, 3)) + rng.normal(0, 1.5, (h + 2 * pad, w + 2 * pad, 1))
    canvas[pad : pad + h, pad : pad + w] = alpha * tissue + (1 - alpha) * canvas[pad : pad + h, pad : pad + w]
    return np.clip(canvas, 0, 255).round().astype(np.uint8)


def dab_to_aec(rgb: np.ndarray) -> np.ndarray:
    """Re-render a haematoxylin + DAB image with haematoxylin + AEC stain vectors."""
    hed = skimage.color.rgb2hed(rgb)
    hax = np.stack([hed[..., 0], hed[..., 2], np.zeros_like(hed[..., 0])], axis=-1)
    out = skimage.color.combine_stains(hax, skimage.color.rgb_from_hax)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def dab_to_eosin(rgb: np.ndarray) -> np.ndarray:
    """Re-render a haematoxylin + DAB image with the haematoxylin + eosin stain vectors of H&E."""
    hed = skimage.color.rgb2hed(rgb)
    he = np.stack([hed[..., 0], hed[..., 2], np.zeros_like(hed[..., 0])], axis=-1)
    out = skimage.color.combine_stains(he, skimage.color.rgb_from_hed)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


TARGETS = {"aec": dab_to_aec, "he": dab_to_eosin}


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1


def random_crops(source: torch.Tensor, target: torch.Tensor, size: int, count: int, rng: np.random.Generator):
    _, h, w = source.shape
    xs, ys = [], []
    for _ in range(count):
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        pair = [t[:, y : y + size, x : x + size].rot90(k, dims=(1, 2)) for t in (source, target)]
        if flip:
            pair = [t.flip(2) for t in pair]
        xs.append(pair[0])
        ys.append(pair[1])
    return torch.stack(xs), torch.stack(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", choices=sorted(TARGETS), default="aec", help="what DAB becomes")
    args = parser.parse_args()
    stain = TARGETS[args.target]

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ihc = skimage.data.immunohistochemistry()
    source, target = to_tensor(ihc), to_tensor(stain(ihc))
    train = (source[:, :, :TRAIN_COLUMNS], target[:, :, :TRAIN_COLUMNS])
    held_out = (source[:, :, TRAIN_COLUMNS:], target[:, :, TRAIN_COLUMNS:])
    slide = on_glass(ihc[:, :TRAIN_COLUMNS], rng)
    train_on_glass = (to_tensor(slide), to_tensor(stain(slide)))

    net = ResnetGenerator(ngf=args.ngf, n_blocks=args.blocks)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3, betas=(0.5, 0.999))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = random_crops(*(train if step % 2 else train_on_glass), args.crop, args.batch, rng)
        loss = F.l1_loss(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step:5d}  train L1 {loss.item():.4f}  {time.perf_counter() - start:6.0f} s", flush=True)

    net.eval()
    with torch.no_grad():
        # Held-out strip, translated whole (128 × 512, a multiple of the stride).
        error = F.l1_loss(net(held_out[0][None]), held_out[1][None]).item() * 127.5
        identity = F.l1_loss(held_out[0], held_out[1]).item() * 127.5
    print(f"held-out mean absolute error: {error:.2f} grey levels (input vs target: {identity:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
