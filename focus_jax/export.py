"""Export of faces to files researchers analyse: OBJ meshes, NoW landmarks, coefficients, renders.

``python -m focus_jax.export --out=out/demo`` writes, for the mean face of the chosen model and
``--num`` random faces (coefficients drawn from the model's prior):

- ``face_XXX.obj``: the neutral-expression mesh (mm, model frame) without vertex colours, the
  form the NoW evaluation reads (its loader rejects ``v x y z r g b`` lines);
- ``face_XXX_lmk7.npy``: the 7 NoW landmarks ``(7, 3)`` of that mesh;
- ``face_XXX_coeffs.npz``: every coefficient group, including expression, pose and light;
- ``renders.png``: the faces rendered at 224x224 with their expression, pose and light.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from focus_jax import files
from focus_jax.render import coefficients
from focus_jax.render import morphable_model as mm


def save_npy(path: str, array: np.ndarray) -> None:
  """``np.save`` written atomically."""
  files.atomic_write(path, lambda f: np.save(f, array))


def export_face(prefix: str, model: mm.MorphableModel, coeffs: coefficients.Coefficients) -> None:
  """Writes ``PREFIX.obj`` (neutral expression), ``PREFIX_lmk7.npy`` and ``PREFIX_coeffs.npz``
  (one array per coefficient group, keys ``shape, expression, color, pose, light``)."""
  neutral = np.asarray(
    mm.vertices(model, coeffs.shape, np.zeros(model.sizes["expression"], np.float32))
  )
  files.write_obj(f"{prefix}.obj", neutral, np.asarray(model.triangles))
  save_npy(f"{prefix}_lmk7.npy", neutral[np.asarray(model.now_landmarks)])
  files.save_npz(f"{prefix}_coeffs.npz", {k: np.asarray(v) for k, v in coeffs.to_dict().items()})


def save_png(path: str, image: np.ndarray) -> None:
  """Saves an RGB image ``(H, W, 3)`` in [0, 1] (clipped) as PNG, atomically."""
  pixels = (np.clip(np.asarray(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  files.write_png(path, pixels)


# SH band-1 coefficients of a soft light from the upper left of the camera (per channel, 9 terms),
# so that the mean face shows its relief; y is down and z away from the camera (SPEC §3).
KEY_LIGHT = np.array([0.0, 0.4, -0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)


# Export's prior: shape and color N(0, 1), expression N(0, 0.5); pitch, yaw and roll up to 0.15,
# 0.5 (~30 degrees) and 0.1 rad, no translation; a white band-1 light of random direction on top
# of the renderer's ambient term.
EXPORT_RANGES = coefficients.PriorRanges(
  expression_std=0.5, rotation=(0.15, 0.5, 0.1), band_std=(0.5, 0.0)
)


def sample_coefficients(
  model: mm.MorphableModel, num: int, seed: int
) -> list[coefficients.Coefficients]:
  """The mean face (frontal, :data:`KEY_LIGHT`) then ``num`` faces drawn within
  :data:`EXPORT_RANGES`."""
  rng = np.random.default_rng(seed)
  mean = coefficients.Coefficients.zeros(model.sizes)
  mean = dataclasses.replace(mean, light=np.tile(KEY_LIGHT, 3))
  return [mean] + [coefficients.sample(rng, model.sizes, EXPORT_RANGES) for _ in range(num)]


def export(out: str, model: str = "embedded", num: int = 7, seed: int = 0) -> dict:
  """Writes the mean face and ``num`` random faces of a model (module docs) into ``out``.

  Args:
    out: output directory (created if missing).
    model: spec of ``facemodels.zoo.load_model``: embedded, embedded-bfm, ict or a BFM h5 path.
    num: random faces besides the mean face.
    seed: seed of the random coefficients.

  Returns:
    ``{"model": model, "vertices": V, "triangles": F, "faces": num + 1}``.
  """
  from focus_jax.facemodels import zoo
  from focus_jax.render import pipeline

  face_model = zoo.load_model(model)
  faces = sample_coefficients(face_model, num, seed)
  for i, coeffs in enumerate(faces):
    export_face(os.path.join(out, f"face_{i:03d}"), face_model, coeffs)
  batch = coefficients.stack(faces)
  images = np.asarray(pipeline.render_batch(face_model, batch, 224, 224).image)
  cols = min(len(images), 4)
  rows = -(-len(images) // cols)
  grid = np.zeros((rows * 224, cols * 224, 3), np.float32)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    grid[r * 224 : (r + 1) * 224, c * 224 : (c + 1) * 224] = img
  save_png(os.path.join(out, "renders.png"), grid)
  return {
    "model": model,
    "vertices": int(face_model.num_vertices),
    "triangles": int(face_model.num_triangles),
    "faces": len(faces),
  }


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m focus_jax.export", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument(
    "--model", default="embedded", help="embedded | embedded-bfm | ict | path to a BFM h5"
  )
  parser.add_argument("--out", default="out/export", help="output directory")
  parser.add_argument(
    "--num", type=int, default=7, help="number of random faces besides the mean face"
  )
  parser.add_argument("--seed", type=int, default=0, help="random seed")
  args = parser.parse_args(argv)
  summary = export(args.out, args.model, args.num, args.seed)
  print(
    f"model {summary['model']}: {summary['vertices']} vertices, {summary['triangles']} "
    f"triangles; wrote {summary['faces']} faces (.obj, _lmk7.npy, _coeffs.npz) and renders.png "
    f"to {args.out}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
