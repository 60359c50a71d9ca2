"""The plain open_clip pipeline a user would write: the baseline of bench_index.py."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its threads so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Baseline:
    """The plain open_clip pipeline: full decode, open_clip transforms, fp32, batch 32."""

    def __init__(self, model: str, checkpoint: Path, batch_size: int = 32) -> None:
        import open_clip
        import torch

        self.torch = torch
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model, pretrained=str(checkpoint)
        )
        self.model.eval()
        self.batch_size = batch_size
        with torch.no_grad():  # warm up
            self.model.encode_image(torch.zeros(2, 3, 224, 224))

    def run(self, folder: Path, out: Path) -> dict:
        from PIL import Image

        torch = self.torch
        start, cpu = time.perf_counter(), cpu_seconds()
        paths = []
        for dirpath, _, files in os.walk(folder):
            paths += [
                os.path.join(dirpath, f)
                for f in sorted(files)
                if f.lower().endswith((".jpg", ".jpeg", ".png"))
            ]
        chunks = []
        with torch.no_grad():
            for i in range(0, len(paths), self.batch_size):
                batch = torch.stack(
                    [
                        self.preprocess(Image.open(p).convert("RGB"))
                        for p in paths[i : i + self.batch_size]
                    ]
                )
                emb = self.model.encode_image(batch)
                chunks.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
        np.save(out, np.concatenate(chunks))
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        return {
            "images": len(paths),
            "seconds": seconds,
            "images_per_second": len(paths) / seconds,
            "cpu_seconds": cpu,
            "images_per_cpu_second": len(paths) / cpu,
            "precision": "float32",
            "batch_size": self.batch_size,
            "workers": 1,
        }
