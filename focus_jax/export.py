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

import os

import numpy as np

from focus_jax import mesh_io
from focus_jax.render import morphable_model as mm


def save_npy(path: str, array: np.ndarray) -> None:
  """``np.save`` written atomically."""
  mesh_io.atomic_write(path, lambda f: np.save(f, array))


def export_face(prefix: str, model: mm.MorphableModel, coeffs: dict) -> None:
  """Writes ``PREFIX.obj`` (neutral expression), ``PREFIX_lmk7.npy`` and ``PREFIX_coeffs.npz``."""
  neutral = np.asarray(
    mm.vertices(model, coeffs["shape"], np.zeros(model.sizes["expression"], np.float32))
  )
  mesh_io.write_obj(f"{prefix}.obj", neutral, np.asarray(model.triangles))
  save_npy(f"{prefix}_lmk7.npy", neutral[np.asarray(model.now_landmarks)])
  mesh_io.atomic_write(
    f"{prefix}_coeffs.npz", lambda f: np.savez(f, **{k: np.asarray(v) for k, v in coeffs.items()})
  )


def save_png(path: str, image: np.ndarray) -> None:
  """Saves an RGB image ``(H, W, 3)`` in [0, 1] (clipped) as PNG, atomically."""
  import PIL.Image

  pixels = (np.clip(np.asarray(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  mesh_io.atomic_write(path, lambda f: PIL.Image.fromarray(pixels).save(f, format="PNG"))


# SH band-1 coefficients of a soft light from the upper left of the camera (per channel, 9 terms),
# so that the mean face shows its relief; y is down and z away from the camera (SPEC §3).
KEY_LIGHT = np.array([0.0, 0.4, -0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)


def sample_coefficients(model: mm.MorphableModel, num: int, seed: int) -> list[dict]:
  """The mean face (frontal, key light) then ``num`` faces drawn from the prior.

  Shape and color coefficients are N(0, 1) (the model's standard deviations), expression
  N(0, 0.5); yaw up to +-30 degrees; light = a random direction on top of the ambient term.
  """
  rng = np.random.default_rng(seed)
  sizes = model.sizes
  faces = [{
      "shape": np.zeros(sizes["shape"], np.float32),
      "expression": np.zeros(sizes["expression"], np.float32),
      "color": np.zeros(sizes["color"], np.float32),
      "pose": np.zeros(6, np.float32),
      "light": np.tile(KEY_LIGHT, 3),
  }]  # fmt: skip
  for _ in range(num):
    light = np.zeros((3, 9), np.float32)
    light[:, 1:4] = rng.normal(0.0, 0.5, 3)  # same direction in every channel: white light
    faces.append({
        "shape": rng.normal(size=sizes["shape"]).astype(np.float32),
        "expression": (0.5 * rng.normal(size=sizes["expression"])).astype(np.float32),
        "color": rng.normal(size=sizes["color"]).astype(np.float32),
        "pose": np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.5, 0.5), rng.uniform(-0.1, 0.1),
                          0.0, 0.0, 0.0], np.float32),
        "light": light.reshape(-1),
    })  # fmt: skip
  return faces


def main(argv) -> None:
  del argv
  import jax

  from focus_jax import model_zoo
  from focus_jax.render import pipeline

  model = model_zoo.load_model(FLAGS.model)
  faces = sample_coefficients(model, FLAGS.num, FLAGS.seed)
  for i, coeffs in enumerate(faces):
    export_face(os.path.join(FLAGS.out, f"face_{i:03d}"), model, coeffs)
  batch = jax.tree.map(lambda *xs: np.stack(xs), *faces)
  out = pipeline.render_batch(model, batch, 224, 224)
  images = np.asarray(out.image)
  cols = min(len(images), 4)
  rows = -(-len(images) // cols)
  grid = np.zeros((rows * 224, cols * 224, 3), np.float32)
  for i, img in enumerate(images):
    r, c = divmod(i, cols)
    grid[r * 224 : (r + 1) * 224, c * 224 : (c + 1) * 224] = img
  save_png(os.path.join(FLAGS.out, "renders.png"), grid)
  print(
    f"model {FLAGS.model}: {model.num_vertices} vertices, {model.num_triangles} triangles; "
    f"wrote {len(faces)} faces (.obj, _lmk7.npy, _coeffs.npz) and renders.png to {FLAGS.out}"
  )


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("model", "embedded", "embedded | embedded-bfm | ict | path to a BFM h5")
  flags.DEFINE_string("out", "out/export", "output directory")
  flags.DEFINE_integer("num", 7, "number of random faces besides the mean face")
  flags.DEFINE_integer("seed", 0, "random seed")
  FLAGS = flags.FLAGS
  app.run(main)
