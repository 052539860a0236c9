"""Converts a face model into the BFM 2017 h5 layout used by focus_jax.

    python -m focus_jax.convert_model ict ICT-FaceKit/ --out ict.h5 [--region face|narrow]
    python -m focus_jax.convert_model ict ict_face_light.npz --out ict.h5

The conversion itself lives in :mod:`focus_jax.facemodels.ict`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from focus_jax.facemodels.ict import REGION_POLYGONS, convert_ict


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.convert_model",
    description="Convert a face model into the BFM 2017 h5 layout used by focus_jax.",
  )
  sub = parser.add_subparsers(dest="model", required=True)
  ict = sub.add_parser(
    "ict",
    help="ICT Face Model Light (MIT): an ICT-FaceKit checkout or ict_face_light.npz",
  )
  ict.add_argument("src", help="ICT-FaceKit checkout, its FaceXModel folder, or the compact npz")
  ict.add_argument("--out", required=True, help="output h5 file")
  ict.add_argument("--region", choices=sorted(REGION_POLYGONS), default="face")
  args = parser.parse_args(argv)
  try:
    sizes = convert_ict(args.src, args.out, args.region)
  except ValueError as e:
    parser.exit(2, f"error: {e}\n")
  sys.stdout.write(f"wrote {args.out} ({args.region}): " + json.dumps(sizes) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
