#!/usr/bin/env python
"""Write the built-in clear -> foggy domain pair that the demo, tests and benchmarks use.

    python tools/make_synthetic.py                       # $DETECTRON2_DATASETS/mic_synthetic
    python tools/make_synthetic.py --root /tmp/pair --num-source-train 200 --beta 0.06
    python tools/make_synthetic.py --overwrite           # replace a set made with other parameters

Running it again with the same parameters finds the existing set and exits at
once, so ``make demo`` can call it every time. A set made with *different*
parameters is not replaced without ``--overwrite``: experiments that used it
would silently change.
"""
import argparse
import os
import sys
import time

from mic_det.data.synthetic import (
    DEFAULT_ATMOSPHERIC_LIGHT,
    DEFAULT_BETA,
    SPLITS,
    default_synthetic_root,
    domain_pair_info,
    read_domain_pair_info,
    write_domain_pair,
)




def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=default_synthetic_root(),
                   help="output folder (default: $DETECTRON2_DATASETS/mic_synthetic, "
                        "DETECTRON2_DATASETS defaulting to ./datasets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-source-train", type=int, default=600)
    p.add_argument("--num-source-val", type=int, default=100)
    p.add_argument("--num-target-train", type=int, default=600)
    p.add_argument("--num-target-val", type=int, default=100)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--beta", type=float, default=DEFAULT_BETA,
                   help="fog attenuation coefficient in 1/m (Foggy Cityscapes: 0.005/0.01/0.02)")
    p.add_argument("--atmospheric-light", type=float, nargs="+", default=[DEFAULT_ATMOSPHERIC_LIGHT],
                   help="fog colour as a fraction of 255: one value (grey) or three (R G B)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes drawing images (the output does not depend on it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing set that was made with other parameters")
    args = p.parse_args(argv)
    if len(args.atmospheric_light) not in (1, 3):
        p.error("--atmospheric-light takes one value or three")
    for name in ("num_source_train", "num_source_val", "num_target_train", "num_target_val"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.height < 16 or args.width < 16:
        p.error("--height and --width must be at least 16")
    if args.beta < 0:
        p.error("--beta must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    light = args.atmospheric_light[0] if len(args.atmospheric_light) == 1 else tuple(args.atmospheric_light)
    params = dict(
        seed=args.seed,
        num_source_train=args.num_source_train,
        num_source_val=args.num_source_val,
        num_target_train=args.num_target_train,
        num_target_val=args.num_target_val,
        height=args.height,
        width=args.width,
        beta=args.beta,
        atmospheric_light=light,
    )
    wanted = domain_pair_info(**params)
    existing = read_domain_pair_info(args.root)
    if existing == wanted:
        print(f"The synthetic pair in {args.root} already has these parameters; nothing to do.")
        return 0
    if existing is not None and not args.overwrite:
        print(
            f"error: {args.root} holds a synthetic pair made with other parameters "
            f"(see {os.path.join(args.root, 'info.json')}).\n"
            f"Pass --overwrite to replace it, or --root to write elsewhere.",
            file=sys.stderr,
        )
        return 1
    if existing is None and os.path.isdir(args.root) and os.listdir(args.root) and not args.overwrite:
        known = set(SPLITS) | {"annotations", "info.json"}
        foreign = sorted(set(os.listdir(args.root)) - known)
        if foreign:
            print(
                f"error: {args.root} is not empty and holds no synthetic pair "
                f"(found {', '.join(foreign[:5])}). Pass --overwrite to write into it anyway.",
                file=sys.stderr,
            )
            return 1

    start = time.perf_counter()
    jsons = write_domain_pair(args.root, num_workers=args.workers, **params)
    elapsed = time.perf_counter() - start
    total = sum(wanted["splits"].values())
    print(f"Wrote the synthetic clear -> foggy pair ({total} images of {args.height}x{args.width}, "
          f"beta={args.beta}, A={light}) to {args.root} in {elapsed:.1f} s:")
    for split, path in jsons.items():
        domain = wanted["domains"][split]
        print(f"  {split:<13} {wanted['splits'][split]:>5} {domain:<5} images  "
              f"{os.path.join(args.root, split)}/  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
