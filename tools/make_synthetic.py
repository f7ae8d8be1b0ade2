#!/usr/bin/env python
"""Write the built-in domains (clear -> foggy, clear -> night) with chosen parameters.

    python tools/make_synthetic.py                       # $DETECTRON2_DATASETS/mic_synthetic
    python tools/make_synthetic.py --root /tmp/pair --num-source-train 200 --beta 0.06
    python tools/make_synthetic.py --root /tmp/dark --night-exposure 0.1 --night-read-noise 5
    python tools/make_synthetic.py --overwrite           # replace a set made with other parameters

The default set needs no call: loading any ``synthetic_*`` dataset generates
it on first use. This tool is for other parameters. Running it again with the
same parameters finds the existing set and exits at once; night splits missing
next to an existing clear + foggy set are added to it. A set (or night splits)
made with *different* parameters is not replaced without ``--overwrite``:
experiments that used it would silently change.
"""
import argparse
import os
import sys
import time

from mic_det.data.low_light import LowLight, describe
from mic_det.data.synthetic import (
    DEFAULT_ATMOSPHERIC_LIGHT,
    DEFAULT_BETA,
    DEFAULT_NIGHT,
    SPLIT_DOMAIN,
    default_synthetic_root,
    domain_pair_info,
    generation_lock,
    night_info,
    read_domain_pair_info,
    read_night_info,
    write_domain_pair,
    write_night_splits,
)
from mic_det.data.synthetic.layout import foreign_entries


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=default_synthetic_root(),
                   help="output folder (default: $DETECTRON2_DATASETS/mic_synthetic, "
                        "DETECTRON2_DATASETS defaulting to ./datasets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-source-train", type=int, default=600)
    p.add_argument("--num-source-val", type=int, default=100)
    p.add_argument("--num-target-train", type=int, default=600,
                   help="foggy train images; the night train split shows the same scenes")
    p.add_argument("--num-target-val", type=int, default=100,
                   help="foggy val images; the night val split shows the same scenes")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--beta", type=float, default=DEFAULT_BETA,
                   help="fog attenuation coefficient in 1/m (Foggy Cityscapes: 0.005/0.01/0.02)")
    p.add_argument("--atmospheric-light", type=float, nargs="+", default=[DEFAULT_ATMOSPHERIC_LIGHT],
                   help="fog colour as a fraction of 255: one value (grey) or three (R G B)")
    night = p.add_argument_group("night", "the night domain (mic_det/data/low_light.py explains each number)")
    night.add_argument("--no-night", action="store_true", help="write no night splits")
    night.add_argument("--night-exposure", type=float, default=DEFAULT_NIGHT.exposure,
                       help="ambient light left at night, as a fraction of daylight")
    night.add_argument("--night-lamp-gain", type=float, default=DEFAULT_NIGHT.lamp_gain,
                       help="lamp light at the camera, as a fraction of daylight")
    night.add_argument("--night-lamp-distance", type=float, default=DEFAULT_NIGHT.lamp_distance,
                       help="distance (m) at which the lamp light is half as strong")
    night.add_argument("--night-lamp-colour", type=float, nargs=3, default=list(DEFAULT_NIGHT.lamp_colour),
                       metavar=("R", "G", "B"), help="lamp colour (sodium: warm)")
    night.add_argument("--night-shot-noise", type=float, default=DEFAULT_NIGHT.shot_noise,
                       help="shot-noise variance per unit of signal (the sensor gain, image units)")
    night.add_argument("--night-read-noise", type=float, default=DEFAULT_NIGHT.read_noise,
                       help="read-noise standard deviation (image units)")
    night.add_argument("--night-blur", type=float, default=DEFAULT_NIGHT.blur_sigma,
                       help="Gaussian blur sigma in pixels")
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
    try:
        args.night = None if args.no_night else LowLight(
            exposure=args.night_exposure, lamp_gain=args.night_lamp_gain, lamp_distance=args.night_lamp_distance,
            lamp_colour=tuple(args.night_lamp_colour), shot_noise=args.night_shot_noise,
            read_noise=args.night_read_noise, blur_sigma=args.night_blur)
    except ValueError as e:
        p.error(f"night: {e}")
    return args


def _print_splits(root: str, jsons: dict, sizes: dict) -> None:
    for split, path in jsons.items():
        print(f"  {split:<13} {sizes[split]:>5} {SPLIT_DOMAIN[split]:<5} images  "
              f"{os.path.join(root, split)}/  {path}")


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


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
    night_args = dict(seed=args.seed, num_train=args.num_target_train, num_val=args.num_target_val,
                      height=args.height, width=args.width)
    wanted = domain_pair_info(**params)
    wanted_night = None if args.night is None else night_info(night=args.night, **night_args)
    with generation_lock(args.root):  # not while a loader generates the set on first use
        existing = read_domain_pair_info(args.root)
        existing_night = read_night_info(args.root, existing) if existing is not None else None
        start = time.perf_counter()
        if existing == wanted:
            if wanted_night is None or existing_night == wanted_night:
                print(f"The synthetic set in {args.root} already has these parameters; nothing to do.")
                return 0
            if existing_night is not None and not args.overwrite:
                return _refuse(f"{args.root} holds night splits made with other parameters (see "
                               f"{os.path.join(args.root, 'night_info.json')}).\n"
                               f"Pass --overwrite to replace them, or --root to write elsewhere.")
            jsons = write_night_splits(args.root, night=args.night, num_workers=args.workers, **night_args)
            print(f"Added night splits ({describe(args.night)}) to the synthetic set in {args.root} "
                  f"in {time.perf_counter() - start:.1f} s:")
            _print_splits(args.root, jsons, wanted_night["splits"])
            return 0
        if existing is not None and not args.overwrite:
            return _refuse(f"{args.root} holds a synthetic set made with other parameters "
                           f"(see {os.path.join(args.root, 'info.json')}).\n"
                           f"Pass --overwrite to replace it, or --root to write elsewhere.")
        foreign = foreign_entries(args.root)
        if existing is None and foreign and not args.overwrite:
            return _refuse(f"{args.root} is not empty and holds no synthetic set "
                           f"(found {', '.join(foreign[:5])}). Pass --overwrite to write into it anyway.")
        jsons = write_domain_pair(args.root, night=args.night, num_workers=args.workers, **params)
    total = sum(wanted["splits"].values()) + (sum(wanted_night["splits"].values()) if wanted_night else 0)
    print(f"Wrote the synthetic set ({total} images of {args.height}x{args.width}; fog beta={args.beta}, A={light}; "
          f"night: {describe(args.night)}) to {args.root} in {time.perf_counter() - start:.1f} s:")
    _print_splits(args.root, jsons, {**wanted["splits"], **(wanted_night["splits"] if wanted_night else {})})
    return 0


if __name__ == "__main__":
    sys.exit(main())
