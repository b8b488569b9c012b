"""``fcmae-export``: pretrained encoder weights -> dense ConvNeXt V2 (ours, timm, HF).

    fcmae-export CHECKPOINT --format {dense,timm,hf} --output FILE [--verify] [--force]

Writes safetensors when FILE ends in ``.safetensors``, else a torch state dict. With
``--verify`` the written file is loaded into its target and compared with the sparse encoder;
the file is moved into place only when the check passes (exit status 1 otherwise). The last
line on stdout is the one-line result.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fcmae.export import FORMATS, VERIFY_TOLERANCE, check_export_args, export_checkpoint

log = logging.getLogger("fcmae.export")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fcmae-export",
        description="Export ConvNeXt V2 encoder weights (FCMAE pretraining checkpoint, either "
        "engine, or the reference implementation's layouts) to a dense ConvNeXt V2.",
    )
    p.add_argument(
        "checkpoint", help="pretraining checkpoint or state dict (.pt/.pth/.safetensors)"
    )
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="target model")
    p.add_argument("--output", "-o", required=True, help="output file (.safetensors or torch)")
    p.add_argument(
        "--verify", action="store_true", help="compare features with the sparse encoder"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument(
        "--tolerance",
        type=float,
        default=VERIFY_TOLERANCE,
        help="max error relative to the feature scale, fp32 (default %(default)g)",
    )
    p.add_argument(
        "--image-size", type=int, default=64, help="verification images (multiple of 32)"
    )
    p.add_argument(
        "--depthwise-impl",
        default="minkowski",
        choices=("minkowski", "canvas"),
        help="sparse depthwise conv used by --verify (default: MinkowskiEngine's own)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the verification images and mask")
    args = p.parse_args(argv)
    if args.image_size <= 0 or args.image_size % 32:
        p.error(f"--image-size must be a positive multiple of 32, got {args.image_size}")
    if not args.tolerance > 0:
        p.error(f"--tolerance must be positive, got {args.tolerance}")
    try:
        check_export_args(args.checkpoint, args.output, args.fmt, args.force)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        result = export_checkpoint(
            args.checkpoint,
            args.output,
            args.fmt,
            do_verify=args.verify,
            force=args.force,
            image_size=args.image_size,
            depthwise_impl=args.depthwise_impl,
            seed=args.seed,
            tolerance=args.tolerance,
        )
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"fcmae-export: error: {err}") from None
    worst = max((c.error for c in result.checks), default=None)
    verified = "" if worst is None else f"; verify max rel error {worst:.2e}"
    if not result.ok:
        raise SystemExit(
            f"fcmae-export: verification FAILED{verified} > tolerance {args.tolerance:g}; "
            f"nothing written to {result.output}"
        )
    if worst is not None:
        verified += f" <= {args.tolerance:g}"
    print(
        f"wrote {result.output} ({result.fmt}, {result.size}, from {result.layout}, "
        f"{result.num_tensors} tensors, {result.num_params / 1e6:.2f}M params{verified})"
    )


if __name__ == "__main__":
    sys.exit(main())
