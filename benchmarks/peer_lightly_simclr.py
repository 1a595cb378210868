"""The peer side of issue 16's comparison: SimCLR in LightlySSL (PyTorch) on the same quarter-width
CIFAR ResNet-18, batch and epochs as `training/simclr_resnet18w025_cifar10.toml`, timed the same way
(source images per second, an image = its two views) and judged by the same weighted kNN (k = 200)
on CIFAR-10's test split.

It runs in an environment of its own (LightlySSL 1.6, torch 2.13, torchvision 0.28; not this
project's dependencies), on CIFAR-10 exported once from the TFDS data directory by this project's
environment, so both sides train on the same 50,000 images:

    python benchmarks/peer_lightly_simclr.py export --data-dir DATA --out cifar10.npz     # this project's venv
    PEER/bin/python benchmarks/peer_lightly_simclr.py train --npz cifar10.npz --epochs 5 --out peer.json

What the peer runs is LightlySSL's own CIFAR-10 SimCLR benchmark setting (its `SimCLRTransform` at 32 px
without blur and colour-jitter strength 0.5, `NTXentLoss` at temperature 0.5, SGD 0.06 per 128 images
with momentum 0.9, weight decay 5e-4 and a cosine schedule over the epochs), with this zoo's projection
head (128 -> 512 -> 128) so that both sides do the same arithmetic; two loader worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def export(data_dir: str, out: str) -> None:
    import numpy as np
    import tensorflow_datasets as tfds

    root = Path(data_dir)
    tfds_dir = root / "tensorflow_datasets" if (root / "tensorflow_datasets").is_dir() else root
    arrays = {}
    for split in ("train", "test"):
        data = tfds.as_numpy(tfds.load("cifar10", split=split, data_dir=str(tfds_dir), batch_size=-1, download=False))
        arrays[f"{split}_x"], arrays[f"{split}_y"] = data["image"], data["label"]
    np.savez(out, **arrays)
    print(f"CIFAR-10 train {arrays['train_x'].shape} and test {arrays['test_x'].shape} written to {out}")


def weighted_knn(train_f, train_y, test_f, test_y, k: int = 200, temperature: float = 0.1, classes: int = 10):
    """Accuracy of the cosine-similarity kNN whose votes weigh exp(similarity / temperature)."""
    import torch

    correct = 0
    for start in range(0, len(test_f), 500):
        sim = test_f[start:start + 500] @ train_f.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(top), classes).scatter_add_(1, train_y[idx], (top / temperature).exp())
        correct += int((votes.argmax(1) == test_y[start:start + 500]).sum())
    return correct / len(test_f)


def train(npz: str, epochs: int, batch_size: int, workers: int, out: str | None, seed: int = 0) -> dict:
    import numpy as np
    import torch
    import torchvision.transforms as T
    from lightly.loss import NTXentLoss
    from lightly.models import ResNetGenerator
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from lightly.transforms.utils import IMAGENET_NORMALIZE
    from PIL import Image

    data = np.load(npz)
    train_x, test_x = data["train_x"], data["test_x"]
    train_y, test_y = torch.as_tensor(data["train_y"]), torch.as_tensor(data["test_y"])
    torch.manual_seed(seed)  # initial weights, loader order and augmentations (run-to-run spread: --seed)

    class Views(torch.utils.data.Dataset):
        def __init__(self, images, transform):
            self.images, self.transform = images, transform

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i]))

    transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    loader = torch.utils.data.DataLoader(Views(train_x, transform), batch_size=batch_size, shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=workers > 0)
    resnet = ResNetGenerator("resnet-18", width=0.25)
    backbone = torch.nn.Sequential(*list(resnet.children())[:-1], torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    features = backbone(torch.zeros(2, 3, 32, 32)).shape[1]
    head = SimCLRProjectionHead(features, 512, 128)
    model = torch.nn.Sequential(backbone, head)
    params = sum(p.numel() for p in backbone.parameters())
    criterion = NTXentLoss(temperature=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06 * batch_size / 128, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    history, t_start = [], time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        t0, seen, losses, steady = time.time(), 0, [], None
        for step, views in enumerate(loader):  # [first views, second views]
            z0, z1 = model(views[0]), model(views[1])
            loss = criterion(z0, z1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(views[0])
            losses.append(float(loss))
            if step == 9:  # the steady rate: from the 10th step on (loader workers started)
                steady = (time.time(), seen)
            if step % 20 == 0:
                print(f"epoch {epoch} step {step}/{len(loader)} loss {losses[-1]:.3f} "
                      f"{seen / (time.time() - t0):.0f} images/s", flush=True)
        seconds = time.time() - t0
        history.append({"epoch": epoch, "seconds": seconds, "images_per_second": seen / seconds,
                        "steady_images_per_second": (seen - steady[1]) / (time.time() - steady[0]) if steady else None,
                        "loss": float(np.mean(losses))})
        print(json.dumps(history[-1]), flush=True)
    train_seconds = time.time() - t_start

    evaluation = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_NORMALIZE["mean"], IMAGENET_NORMALIZE["std"])])
    model.eval()

    @torch.no_grad()
    def embed(images):
        out = [backbone(torch.stack([evaluation(Image.fromarray(x)) for x in images[i:i + 500]]))
               for i in range(0, len(images), 500)]
        return torch.nn.functional.normalize(torch.cat(out), dim=1)

    train_f, test_f = embed(train_x), embed(test_x)
    report = {
        "peer": "lightly 1.6 SimCLR", "torch": torch.__version__, "threads": torch.get_num_threads(), "seed": seed,
        "backbone_params": params, "epochs": epochs, "batch_size": batch_size, "loader_workers": workers,
        "train_seconds": train_seconds, "history": history,
        "images_per_second": epochs * len(loader) * batch_size / train_seconds,
        "knn_k200": {f"t={t:g}": weighted_knn(train_f, train_y, test_f, test_y, 200, t) for t in (0.1, 0.07)},
    }
    print(json.dumps(report, indent=2))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="CIFAR-10 from the TFDS data directory to one .npz (this project's venv)")
    p.add_argument("--data-dir", default=os.environ.get("SSL_ZOO_DATA_DIR"), required=not os.environ.get("SSL_ZOO_DATA_DIR"))
    p.add_argument("--out", required=True)
    p = sub.add_parser("train", help="the peer's SimCLR, then its kNN (the peer's venv)")
    p.add_argument("--npz", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.command == "export":
        export(args.data_dir, args.out)
    else:
        train(args.npz, args.epochs, args.batch_size, args.workers, args.out, args.seed)


if __name__ == "__main__":
    main()
