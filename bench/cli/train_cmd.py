"""`bench train`: train a registered model on a folder of HR images; `--export` writes the weights file.

    bench train --model swinir-light --scale 2 --train DIR [--val DIR] [--iters N] [--batch 16] [--patch 64]
                [--lr 2e-4] [--resume CKPT | --init CKPT] [--out DIR] [--time-limit MIN] [--export FILE]
    bench train --export-from CKPT --export FILE      # export only
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.errors import ConfigError


def default_out_dir(model: str, scale: int) -> Path:
    cache = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "sr-ptq-bench"))
    return cache / "train" / f"{model}_x{scale}"


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (L1, Adam, random patches; resumable)",
                              description="Train a registered SR model on HR images (LR made with the MATLAB-exact "
                                          "bicubic). Validation uses --val or images held out of --train, never a test set.")
    p.add_argument("--model", default="swinir-light")
    p.add_argument("--scale", type=int, default=None)
    p.add_argument("--train", type=Path, default=None, metavar="DIR", help="folder of HR training images (recursive)")
    p.add_argument("--val", type=Path, default=None, metavar="DIR", help="held-out HR images for validation PSNR")
    p.add_argument("--val-max", type=int, default=0, metavar="N",
                   help="validate on at most N images (default all); without --val the held-out images are every "
                        "10th image of --train (the same split as calibration's 'val'), never trained on")
    p.add_argument("--val-crop", type=int, default=0, metavar="PX",
                   help="centre-crop validation HR images to at most PX pixels (0 = full images)")
    p.add_argument("--iters", type=int, default=1000, help="total iterations (schedule length)")
    p.add_argument("--stop-at", type=int, default=None, metavar="N", help="stop this session at iteration N")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64, help="LR patch size (HR = patch * scale)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--schedule", choices=["cosine", "multistep", "constant"], default="cosine")
    p.add_argument("--warmup", type=int, default=0, metavar="N", help="linear lr warm-up iterations")
    p.add_argument("--min-lr", type=float, default=1e-7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-only", action="append", default=[], metavar="GLOB",
                   help="train only the parameters whose names match (repeatable; e.g. 'deconv.*' to fine-tune "
                        "FSRCNN's deconvolution for another scale); the others stay frozen")
    p.add_argument("--loss", choices=["l1", "l1-y"], default="l1",
                   help="l1 on RGB (default) or on the Y channel only (networks that predict luma only, e.g. fsrcnn)")
    p.add_argument("--resume", type=Path, default=None, metavar="CKPT", help="continue a run from its checkpoint")
    p.add_argument("--init", type=Path, default=None, metavar="CKPT",
                   help="start from another checkpoint's weights where names and shapes match (e.g. x3 from x2)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="checkpoint folder (default $BENCH_CACHE/train/<model>_x<scale>)")
    p.add_argument("--ckpt-every", type=int, default=100, metavar="N")
    p.add_argument("--val-every", type=int, default=500, metavar="N")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                   help="stop (checkpoint, validate, export) after MIN minutes of wall clock")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--export", type=Path, default=None, metavar="FILE.safetensors",
                   help="write the final weights as safetensors (loadable by create_model(..., weights=FILE))")
    p.add_argument("--export-from", type=Path, default=None, metavar="CKPT",
                   help="only export CKPT to --export, no training")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.train import TrainConfig, export_weights, train

    if args.export_from is not None:
        if args.export is None:
            raise ConfigError("--export-from needs --export FILE.safetensors (where to write the weights)")
        out = export_weights(args.export_from, args.export)
        print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB)")
        return 0
    if args.train is None or args.scale is None:
        raise ConfigError("bench train needs --scale S and --train DIR (a folder of HR images)")
    cfg = TrainConfig(
        model=args.model, scale=args.scale, train_dir=args.train, val_dir=args.val, val_max=args.val_max,
        val_crop=args.val_crop, iters=args.iters, stop_at=args.stop_at, batch=args.batch, patch=args.patch,
        lr=args.lr, schedule=args.schedule, warmup=args.warmup, min_lr=args.min_lr, seed=args.seed, loss=args.loss,
        train_only=tuple(args.train_only),
        out_dir=args.out or default_out_dir(args.model, args.scale), ckpt_every=args.ckpt_every,
        val_every=args.val_every, device=args.device, threads=args.threads, time_limit_min=args.time_limit,
        resume=args.resume, init=args.init, export=args.export, amp=not args.no_amp, progress=not args.no_progress,
    )
    result = train(cfg)
    psnr = "n/a" if result.last_val_psnr is None else f"{result.last_val_psnr:.2f} dB"
    print(f"{cfg.model} x{cfg.scale}: iteration {result.iteration} ({result.stopped_by}), val PSNR {psnr}, "
          f"checkpoint {result.checkpoint}" + (f", weights {result.exported}" if result.exported else ""))
    return 0
