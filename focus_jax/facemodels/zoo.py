"""One place to choose a morphable model by name: ``load_model(spec)`` and ``model_path(spec)``.

Specs:

- ``embedded`` / ``embedded-small``: the small embedded model (tests, quick runs);
- ``embedded-bfm``: the BFM-sized embedded model (benchmarks);
- ``ict`` / ``ict-narrow``: the ICT Face Model Light (real faces, MIT license), the full face
  area or the narrow one (see :mod:`focus_jax.facemodels.ict`). Built once into
  ``embedded.cache_dir()`` from ``$FOCUS_JAX_ICT`` (an ICT-FaceKit checkout, its
  ``FaceXModel`` folder or ``ict_face_light.npz``);
- anything else: a path to an h5 file in the BFM 2017 layout (the real BFM 2017, or the output of
  ``python -m focus_jax.convert_model``).

Every model goes through :func:`bfm2017.load_bfm2017`; ``loader_kwargs`` (``n_shape``,
``n_exp``, ``n_color``, ``crop``, ``landmarks``) go to it. For the ICT specs the component
counts default to what the file has (100 identity modes are cut to FOCUS's 80; all 53 blend
shapes and all procedural colour modes are kept), so loading them logs no warning.
"""

from __future__ import annotations

import hashlib
import os

from focus_jax.facemodels import bfm2017, embedded, ict
from focus_jax.render import morphable_model as mm

ICT_ENV = "FOCUS_JAX_ICT"

EMBEDDED = {"embedded": "small", "embedded-small": "small", "embedded-bfm": "bfm"}
ICT = {"ict": "face", "ict-narrow": "narrow"}
SPECS = (*EMBEDDED, *ICT)


def ict_source(path: str | None = None) -> str:
  """The ICT source: ``path`` if given, else ``$FOCUS_JAX_ICT``; ValueError if neither exists."""
  src = path or os.environ.get(ICT_ENV)
  origin = "the given path" if path else f"${ICT_ENV}"
  if not src:
    raise ValueError(
      f"ICT Face Model Light not found: ${ICT_ENV} is unset; {ict.GET_ICT} in ${ICT_ENV} (or set "
      f"it to the path of a compact ict_face_light.npz)"
    )
  if not os.path.exists(src):
    raise ValueError(f"{origin} {src} does not exist; {ict.GET_ICT} in ${ICT_ENV}")
  return src


def _source_key(src: str) -> str:
  """A short digest of the source's location and modification state (part of the cache name)."""
  anchor = src
  for candidate in ("FaceXModel/generic_neutral_mesh.obj", "generic_neutral_mesh.obj"):
    if os.path.isdir(src) and os.path.isfile(os.path.join(src, candidate)):
      anchor = os.path.join(src, candidate)
      break
  stat = os.stat(anchor)
  text = f"{os.path.realpath(anchor)}|{stat.st_size}|{stat.st_mtime_ns}"
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def ict_path(region: str = "face", directory: str | None = None, source: str | None = None) -> str:
  """Path of the cached converted ICT model of ``region``, converting it on first use from
  ``source`` (default: ``$FOCUS_JAX_ICT``)."""
  src = ict_source(source)
  directory = directory or embedded.cache_dir()
  name = f"ict_{region}_v{ict.CONVERTER_VERSION}_{_source_key(src)}.h5"
  out = os.path.join(directory, name)
  if not os.path.exists(out):
    ict.convert_ict(src, out, region)
  return out


def model_path(spec: str) -> str:
  """The h5 file of ``spec`` (see the module docstring), generated or converted if needed."""
  if spec in EMBEDDED:
    return embedded.path(EMBEDDED[spec])
  if spec in ICT:
    return ict_path(ICT[spec])
  if os.path.isfile(spec):
    return spec
  raise ValueError(
    f"unknown model {spec!r}: expected one of {list(SPECS)} or the path of an existing h5 file "
    "in the BFM 2017 layout"
  )


def load_model(spec: str, **loader_kwargs) -> mm.MorphableModel:
  """The morphable model of ``spec``, loaded through ``load_bfm2017(path, **loader_kwargs)``."""
  path = model_path(spec)
  if spec in ICT:
    import h5py

    with h5py.File(path, "r") as h5:
      defaults = {
        "n_shape": min(bfm2017.DEFAULT_COMPONENTS["shape"], h5["shape/model/pcaVariance"].shape[0]),
        "n_exp": h5["expression/model/pcaVariance"].shape[0],
        "n_color": h5["color/model/pcaVariance"].shape[0],
      }
    loader_kwargs = {**defaults, **loader_kwargs}
  return bfm2017.load_bfm2017(path, **loader_kwargs)


def expression_coefficients(spec: str) -> str:
  """What the expression coefficients of ``spec`` mean: ``"std"`` or ``"blend_weights"``.

  ``"std"`` (BFM, embedded): standard deviations of a Gaussian model, sample them from N(0, 1).
  ``"blend_weights"`` (ICT): blend-shape weights, 0 = neutral and 1 = the full expression;
  plausible faces have a few weights in [0, 1] (signed dense N(0, 1) weights look grotesque).
  Read from the file attribute ``expression_coefficients`` (absent means ``"std"``).
  """
  import h5py

  with h5py.File(model_path(spec), "r") as h5:
    value = h5.attrs.get("expression_coefficients", "std")
  return value.decode() if isinstance(value, bytes) else str(value)
