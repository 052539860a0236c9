"""The reconstruction API: trained networks + face model -> coefficients, meshes, masks.

    recon = focus_jax.Reconstructor.from_workdir("runs/quickstart")   # chain or stage workdir
    result = recon(images)                       # aligned faces (B, S, S, 3), uint8 or [0, 1]
    result = recon(photos, landmarks)            # raw photos + their 68 iBUG landmarks

Frames. The networks see aligned faces (Deep3DFaceRecon alignment, SPEC §8) resized to the
training side ``S = recon.image_size`` (``config.data.image_size``: 224 for FOCUS, 64 for the
``:cpu`` quick start). Every image-space output of :class:`Reconstruction` is in pixels of that
``S x S`` frame (pixel centres at integer coordinates, x right, y down); ``align`` maps it back to
the photo (``to_photo_landmarks``). Geometry is in mm in the model frame (x right, y up, z towards
the viewer); the pose maps it into the camera (``render/camera.py``).

Sources of the networks: :meth:`Reconstructor.from_workdir` restores a training workdir (the most
trained stage of a chain: ``adapt``, ``em``, ``unet_pretrain``, ``pretrain``; its encoder and
UNet); :meth:`Reconstructor.from_checkpoints` loads converted ``.npz`` weights (e.g. the original
FOCUS checkpoints, ``python -m focus_jax.convert focus-encoder ...``). Without a trained UNet (a
stage-1 workdir, or no UNet file) the visibility mask is stage 1's robust-threshold inlier mask
(the pseudo label of SPEC §7 step 2).

The compiled forward pass (:meth:`Reconstructor.forward`) runs one batch on the default device;
``__call__`` feeds it fixed-size chunks (``batch_size``, the last one padded) so one program
serves any number of images, and returns NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from focus_jax.render import camera as camera_lib
from focus_jax.render import coefficients, pipeline, visibility
from focus_jax.render import morphable_model as mm

# Preference order of stages in a chain workdir: the most trained first.
_STAGE_ORDER = ("adapt", "em", "unet_pretrain", "pretrain")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """Reconstructions of a batch of ``B`` faces (frames: module docstring).

  Attributes:
    coefficients: :class:`~focus_jax.render.coefficients.Coefficients`, fields ``(B, K)``
      float32: shape, expression, color (model standard deviations), pose ``(rx, ry, rz)`` rad
      and ``(tx, ty, tz)`` mm, light (27 SH coefficients).
    vertices: ``(B, V, 3)`` float32 mm, model frame, with the expression.
    landmarks: ``(B, 68, 2)`` float32 projected iBUG-68 landmarks, pixels of the ``S x S`` frame.
    render: ``(B, S, S, 3)`` float32 shaded render, 0 on the background.
    coverage: ``(B, S, S)`` float32 in {0, 1}: where the render covers the image.
    visible_mask: ``(B, S, S)`` float32 in [0, 1], 1 = face visible (not occluded): the UNet's
      output (or the robust inlier mask without a UNet). Meaningful inside ``coverage``.
    vertex_visibility: ``(B, V)`` int8 codes of ``render.visibility.CLASSES`` (0 visible,
      1 self-occluded, 2 covered by an occluder, 3 outside the image).
    align: ``(B, 5)`` float64 Deep3DFaceRecon ``trans_params (w0, h0, s, tx, ty)`` of each photo
      (``data.alignment.AlignParams``), or None when aligned images were given.
    input_landmarks: ``(B, 68, 2)`` float32 the given landmarks in the ``S x S`` frame, or None.
  """

  coefficients: coefficients.Coefficients
  vertices: jax.Array
  landmarks: jax.Array
  render: jax.Array
  coverage: jax.Array
  visible_mask: jax.Array
  vertex_visibility: jax.Array
  align: np.ndarray | None = None
  input_landmarks: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self.vertices.shape[0])


@functools.partial(jax.jit, static_argnames=("encoder", "unet", "original_shading"))
def _forward(
  encoder, unet, parts: dict, model: mm.MorphableModel, images: jax.Array, original_shading: bool
):
  """The compiled pass of :meth:`Reconstructor.forward` (graph definitions are static)."""
  from focus_jax import losses, objectives

  coeffs = objectives.merge(encoder, parts["encoder"], train=False)(images)
  size_h, size_w = images.shape[1], images.shape[2]
  out = pipeline.render_batch(model, coeffs, size_h, size_w, original_shading=original_shading)
  if unet is None:
    _, visible = losses.robust_photometric(images, out.image, out.mask)
  else:
    visible = objectives.merge(unet, parts["unet"], train=False)(out.image, images)[..., 0]
  return assemble(model, coeffs, out, visible)


def assemble(
  model: mm.MorphableModel,
  coeffs: coefficients.Coefficients,
  out: pipeline.RenderOut,
  visible: jax.Array,
) -> Reconstruction:
  """The :class:`Reconstruction` of batched coefficients, their render and visibility mask
  (traceable: vertices and per-vertex visibility are computed here).

  Args:
    model: the morphable model.
    coeffs: batched coefficients, fields ``(B, K)``.
    out: their ``pipeline.render_batch`` output at ``S x S``.
    visible: ``(B, S, S)`` float32 visibility mask, 1 = face visible.
  """
  size_h, size_w = out.image.shape[1:3]
  vertices = jax.vmap(mm.vertices, in_axes=(None, 0, 0))(model, coeffs.shape, coeffs.expression)

  def classify(pose, verts, projected, fragments, mask):
    cam = camera_lib.camera_from_pose(pose, size_h, size_w)
    return visibility.vertex_visibility(
      camera_lib.to_camera(cam, verts),
      projected,
      model.triangles,
      fragments.face_id,
      fragments.depth,
      mask,
      cam.focal,
    )

  codes = jax.vmap(classify)(coeffs.pose, vertices, out.projected, out.fragments, visible)
  return Reconstruction(
    coefficients=coeffs,
    vertices=vertices,
    landmarks=out.landmarks,
    render=out.image,
    coverage=out.mask,
    visible_mask=visible,
    vertex_visibility=codes,
  )


def _as_float_images(images) -> np.ndarray:
  """``(B, H, W, 3)`` float32 in [0, 1] from uint8 (0-255) or float images."""
  array = np.asarray(images)
  if array.ndim != 4 or array.shape[-1] != 3:
    raise ValueError(f"expected images (B, H, W, 3), got shape {array.shape}")
  if array.dtype == np.uint8:
    return array.astype(np.float32) / 255.0
  return array.astype(np.float32)


def _as_uint8_photo(photo) -> np.ndarray:
  """``(h, w, 3)`` uint8 from a uint8 (0-255) or float ([0, 1]) photo."""
  array = np.asarray(photo)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(f"expected a photo (h, w, 3), got shape {array.shape}")
  if array.dtype == np.uint8:
    return array
  return np.clip(np.round(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _load_model(model) -> mm.MorphableModel:
  if isinstance(model, mm.MorphableModel):
    return model
  from focus_jax.facemodels import zoo

  return zoo.load_model(model)


def _spec(model) -> str:
  return model if isinstance(model, str) else "<MorphableModel>"


def _check_sizes(model: mm.MorphableModel, encoder_sizes: dict, source: str) -> None:
  """Raises when the encoder head does not predict the model's coefficient counts."""
  want = {k: int(v) for k, v in model.sizes.items()}
  have = {k: int(encoder_sizes[k]) for k in want}
  if want != have:
    raise ValueError(
      f"{source}: the encoder predicts {have} coefficients but the face model has {want}: "
      "use the face model it was trained with"
    )


class Reconstructor:
  """Encoder + UNet + face model, ready to reconstruct faces (module docstring).

  Args:
    model: the morphable model the encoder was trained with.
    encoder: ``(graphdef, part)`` of the face encoder (``objectives.split``).
    unet: ``(graphdef, part)`` of the UNet, or None (robust inlier mask instead).
    image_size: side ``S`` the networks see (images of another side are resized to it).
    batch_size: images per compiled call of ``__call__``.
    source: where the networks came from (for messages and exported metadata).
    step: training step of the checkpoint, if known.
    model_spec: the face model's spec (``facemodels.zoo``), if known (exported metadata).
  """

  def __init__(
    self,
    model: mm.MorphableModel,
    encoder: tuple,
    unet: tuple | None = None,
    *,
    image_size: int = 224,
    batch_size: int = 8,
    source: str = "",
    step: int | None = None,
    model_spec: str = "",
    original_shading: bool = False,
  ):
    if image_size % 16:
      raise ValueError(
        f"image_size must be a multiple of 16 (the UNet pools 4 times), got {image_size}"
      )
    self.model = model
    self.image_size = int(image_size)
    self.batch_size = int(batch_size)
    self.source = source
    self.step = step
    self.model_spec = model_spec
    # The original's SH direction (``pipeline.render``): what an encoder converted from an
    # original FOCUS checkpoint predicts its light for.
    self.original_shading = bool(original_shading)
    self._encoder_def, encoder_part = encoder
    self._unet_def, unet_part = unet if unet is not None else (None, None)
    self._parts = {"encoder": encoder_part, "unet": unet_part}

  @property
  def encoder(self) -> tuple:
    """``(graphdef, part)`` of the face encoder (``objectives.merge`` rebuilds the module)."""
    return self._encoder_def, self._parts["encoder"]

  @property
  def unet(self) -> tuple | None:
    """``(graphdef, part)`` of the UNet, or None (robust inlier masks)."""
    return None if self._unet_def is None else (self._unet_def, self._parts["unet"])

  @property
  def mask_source(self) -> str:
    """``"unet"`` or ``"robust"`` (the stage-1 inlier mask, without a trained UNet)."""
    return "robust" if self._unet_def is None else "unet"

  # ------------------------------------------------------------------------------ constructors

  @classmethod
  def from_workdir(
    cls,
    workdir: str,
    *,
    model: str | mm.MorphableModel | None = None,
    image_size: int | None = None,
    batch_size: int = 8,
  ) -> Reconstructor:
    """Restores the most trained stage of a training workdir.

    Args:
      workdir: a stage workdir (``config.json`` + ``checkpoints/``) or a chain workdir
        (``pretrain/``, ``unet_pretrain/``, ``em/``...).
      model: the face model (spec or record); default: the one of the workdir's config.
      image_size: side the networks see; default ``config.data.image_size``.
      batch_size: images per compiled call.

    Raises:
      ValueError: naming the workdir when it holds no stage or no checkpoint, or the model when
        its coefficient counts differ from the encoder's.
    """
    from focus_jax import train
    from focus_jax import workdir as workdir_lib

    stages = workdir_lib.find_stages(workdir)
    name = next(n for n in _STAGE_ORDER if n in stages)
    config = workdir_lib.read_record(stages[name])[1]
    config.encoder.init = ""  # the checkpoint holds the trained encoder
    trained = train.load_model(config)
    face_model = trained if model is None else _load_model(model)
    # The encoder head was built for the config's model: check before restoring anything.
    _check_sizes(face_model, trained.sizes, stages[name])
    if (face_model.num_vertices, face_model.num_triangles) != (
      trained.num_vertices,
      trained.num_triangles,
    ):
      raise ValueError(
        f"{stages[name]}: trained with a face model of {trained.num_vertices} vertices and "
        f"{trained.num_triangles} triangles ({config.model.spec}), the given one has "
        f"{face_model.num_vertices} and {face_model.num_triangles}"
      )
    nets, parts, step = train.restore_networks(stages[name], config, trained.sizes)
    # A stage-1 workdir's UNet is untrained: the robust inlier mask stands in for it.
    unet = (nets.unet, parts["unet"]) if name != "pretrain" else None
    return cls(
      face_model,
      (nets.encoder, parts["encoder"]),
      unet,
      image_size=image_size or config.data.image_size,
      batch_size=batch_size,
      source=stages[name],
      step=step,
      model_spec=config.model.spec if model is None else _spec(model),
    )

  @classmethod
  def from_checkpoints(
    cls,
    encoder: str,
    unet: str | None = None,
    *,
    model: str | mm.MorphableModel = "embedded",
    image_size: int = 224,
    batch_size: int = 8,
    original_shading: bool = True,
  ) -> Reconstructor:
    """Loads converted weights (``focus_jax.models.weights`` ``.npz``, e.g. the original FOCUS
    checkpoints converted by ``python -m focus_jax.convert focus-encoder|focus-unet``).

    Args:
      encoder: face-encoder ``.npz``.
      unet: UNet ``.npz`` or None (robust inlier mask).
      model: the face model the encoder predicts coefficients of (the original: the BFM 2017 h5).
      image_size: side the networks see (224 for the original).
      batch_size: images per compiled call.
      original_shading: render with the original's SH direction (``pipeline.render``), which
        an encoder converted from an original FOCUS checkpoint predicts its light for; False
        for encoders trained here.
    """
    from focus_jax import objectives
    from focus_jax.models import resnet, weights

    face_model = _load_model(model)
    module = weights.load_module(encoder)
    if not isinstance(module, resnet.FaceEncoder):
      raise ValueError(f"{encoder}: not a face encoder ({type(module).__name__})")
    _check_sizes(face_model, module.sizes, encoder)
    unet_pair = objectives.split(weights.load_module(unet)) if unet else None
    return cls(
      face_model,
      objectives.split(module),
      unet_pair,
      image_size=image_size,
      batch_size=batch_size,
      source=encoder,
      model_spec=_spec(model),
      original_shading=original_shading,
    )

  # ------------------------------------------------------------------------------ inputs

  def align(
    self, photos: Sequence[np.ndarray], landmarks: np.ndarray
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`align_photos` at this reconstructor's side ``S``."""
    return align_photos(photos, landmarks, self.image_size)

  def resize(self, images) -> np.ndarray:
    """:func:`resize_images` to this reconstructor's side ``S``."""
    return resize_images(images, self.image_size)

  # ------------------------------------------------------------------------------ running

  def forward(self, images: jax.Array) -> Reconstruction:
    """The compiled pass on one batch (device arrays, no padding; one program per batch size).

    Args:
      images: ``(B, S, S, 3)`` float32 in [0, 1], aligned.
    """
    return _forward(
      self._encoder_def, self._unet_def, self._parts, self.model, images, self.original_shading
    )

  def __call__(self, images, landmarks: np.ndarray | None = None) -> Reconstruction:
    """Reconstructs faces; returns host (NumPy) arrays.

    Args:
      images: aligned faces ``(B, H, H, 3)`` uint8 or float in [0, 1] (resized to ``S``), or,
        with ``landmarks``, ``B`` raw photos of any sizes (uint8 or float in [0, 1]).
      landmarks: ``(B, 68, 2)`` raw pixel landmarks of the photos, or None for aligned images.

    Returns:
      A :class:`Reconstruction` of NumPy arrays (``align`` and ``input_landmarks`` set for
      photos).
    """
    params = points = None
    if landmarks is not None:
      images, points, params = self.align(images, landmarks)
    else:
      images = self.resize(images)
    n = images.shape[0]
    if n == 0:
      raise ValueError("no images to reconstruct")
    chunks = []
    for start in range(0, n, self.batch_size):
      chunk = images[start : start + self.batch_size]
      pad = self.batch_size - chunk.shape[0]
      if pad:  # one compiled program for every chunk: pad with copies of the last image
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
      out = jax.device_get(self.forward(jnp.asarray(chunk)))
      keep = self.batch_size - pad
      chunks.append(jax.tree.map(lambda x, k=keep: np.asarray(x)[:k], out))
    result = jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)
    return dataclasses.replace(result, align=params, input_landmarks=points)

  # ------------------------------------------------------------------------------ helpers

  def neutral_vertices(self, shape: np.ndarray) -> np.ndarray:
    """Neutral-expression meshes ``(N, V, 3)`` float32 mm of shape coefficients ``(N, K)``."""
    return neutral_vertices(self.model, shape)

  def albedo(self, color: np.ndarray) -> np.ndarray:
    """Per-vertex albedo ``(N, V, 3)`` float32 RGB of color coefficients ``(N, K)``."""
    return albedo(self.model, color)

  def render(self, coeffs: coefficients.Coefficients, size: int) -> pipeline.RenderOut:
    """Renders batched coefficients at ``size x size`` (the camera scales with the image, so
    the face lands on the same place of the aligned frame at any size)."""
    return pipeline.render_batch(
      self.model, coeffs, size, size, original_shading=self.original_shading
    )


@jax.jit
def _neutral(model: mm.MorphableModel, shape: jax.Array) -> jax.Array:
  zero = jnp.zeros(model.sizes["expression"], jnp.float32)
  return jax.vmap(lambda s: mm.vertices(model, s, zero))(shape)


@jax.jit
def _albedo(model: mm.MorphableModel, color: jax.Array) -> jax.Array:
  return jax.vmap(lambda c: mm.albedo(model, c))(color)


def neutral_vertices(model: mm.MorphableModel, shape: np.ndarray) -> np.ndarray:
  """Neutral-expression meshes ``(N, V, 3)`` float32 mm of shape coefficients ``(N, K)``."""
  return np.asarray(_neutral(model, jnp.asarray(shape, jnp.float32)))


def albedo(model: mm.MorphableModel, color: np.ndarray) -> np.ndarray:
  """Per-vertex albedo ``(N, V, 3)`` float32 RGB of color coefficients ``(N, K)``."""
  return np.asarray(_albedo(model, jnp.asarray(color, jnp.float32)))


def align_photos(
  photos: Sequence[np.ndarray], landmarks: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Aligns raw photos (Deep3DFaceRecon, SPEC §8) and resizes them to ``size``, like training.

  Args:
    photos: ``B`` arrays ``(h_i, w_i, 3)`` RGB, uint8 or float in [0, 1] (sizes may differ).
    landmarks: ``(B, 68, 2)`` float raw pixel iBUG-68 landmarks of each photo.
    size: side of the output images.

  Returns:
    ``(images (B, size, size, 3) float32 in [0, 1], landmarks (B, 68, 2) float32 in that frame,
    trans_params (B, 5) float64)``.

  Raises:
    ValueError: for landmarks of the wrong shape or a degenerate face.
  """
  from focus_jax.data import alignment
  from focus_jax.data import pipeline as input_pipeline

  landmarks = np.asarray(landmarks, np.float32)
  if len(photos) != landmarks.shape[0] or landmarks.shape[1:] != (68, 2):
    raise ValueError(
      f"expected (B, 68, 2) landmarks for {len(photos)} photos, got {landmarks.shape}"
    )
  resize = input_pipeline.Resize(size)
  images, points, params = [], [], []
  for photo, lm in zip(photos, landmarks, strict=True):
    image, lm_aligned, _, p = alignment.align_sample(_as_uint8_photo(photo), lm)
    example = resize(
      {"image": image, "landmarks": lm_aligned, "mask": np.zeros(image.shape[:2], np.float32)}
    )
    images.append(example["image"])
    points.append(example["landmarks"])
    params.append(p.as_array())
  return _as_float_images(np.stack(images)), np.stack(points), np.stack(params)


def resize_images(images, size: int) -> np.ndarray:
  """Aligned square images ``(B, H, H, 3)`` (uint8 or [0, 1]) -> ``(B, size, size, 3)`` float32,
  resized like the training pipeline (area filter)."""
  images = _as_float_images(images)
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"aligned images must be square, got {images.shape[1:3]}")
  if images.shape[1] == size:
    return images
  import cv2

  return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def to_frame(points: np.ndarray, size_from: int, size_to: int) -> np.ndarray:
  """Pixel points ``(..., 2)`` of an ``size_from``-square image in a ``size_to``-square resize
  of it (pixel centres follow pixel centres: ``x' = (x + 0.5) s - 0.5``)."""
  scale = size_to / size_from
  return ((np.asarray(points, np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def to_photo_landmarks(points: np.ndarray, align: np.ndarray, size: int) -> np.ndarray:
  """Points ``(B, N, 2)`` in the ``size`` frame -> raw photo pixels, through each photo's
  ``trans_params (B, 5)`` (inverse Deep3D alignment, ``deep3d`` landmark convention)."""
  from focus_jax.data import alignment

  aligned = to_frame(points, size, alignment.TARGET_SIZE)
  return np.stack(
    [
      alignment.unalign_landmarks(p, alignment.AlignParams.from_array(a))
      for p, a in zip(aligned, np.asarray(align), strict=True)
    ]
  )
