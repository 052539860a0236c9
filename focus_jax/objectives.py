"""The objectives of the four FOCUS training stages (SPEC §6-7) and their weights.

Each stage objective is a pure function of a network's parameter pytree, a batch and the frozen
inputs (``frozen = {"model": MorphableModel, "arcface": frozen ArcFace pytree or None}``). It
returns ``(total, (new non-parameter state, scalars))`` so that ``jax.value_and_grad(...,
has_aux=True)`` differentiates exactly the network being updated; the other network runs in
inference mode under ``stop_gradient``. The weights live in ``config.loss`` (SPEC §7 defaults in
``config_lib.base()``) and reach the objectives as a :class:`FocusLossWeights`.

Networks are used functionally (Flax NNX): :func:`split` a module once into a static graph
definition and a ``{'params', 'rest'}`` pytree, :func:`merge` inside the traced objective.

Fidelity notes. The area term of the encoder loss uses the renderer's soft silhouette when
``config.soft_area`` is on: the original's mask is hard and detached, so that term gave the
encoder no gradient at all. Without ArcFace weights the perceptual, preserve and dist terms are
0 (the trainer says so once and records it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from focus_jax import losses
from focus_jax.models import arcface_align
from focus_jax.render import pipeline

# --------------------------------------------------------------------------------------------
# Weights of SPEC §7 (values: config.loss, declared in config_lib.base()).


class _Weights:
  """Shared behaviour of the weight groups: a weighted sum over exactly their terms."""

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)

  def total(self, terms: Mapping[str, jax.Array]) -> jax.Array:
    """``sum_k w_k * terms[k]`` over this group's terms; ``terms`` must hold exactly those keys."""
    weights = self.as_dict()
    if set(terms) != set(weights):
      raise ValueError(
        f"{type(self).__name__}: loss terms {sorted(terms)} do not match the weighted terms "
        f"{sorted(weights)}"
      )
    return sum(weights[k] * terms[k] for k in sorted(weights))


@dataclasses.dataclass(frozen=True)
class Stage1Weights(_Weights):
  """Stage 1 (autoencoder pretraining) loss weights."""

  photometric: float = 0.5
  stat_reg: float = 0.1
  landmarks: float = 5e-4
  perceptual: float = 0.25


@dataclasses.dataclass(frozen=True)
class UNetPretrainWeights(_Weights):
  """Stage 3 (UNet pretraining on the stage-1 pseudo labels) loss weights."""

  bce: float = 1.0


@dataclasses.dataclass(frozen=True)
class EncoderWeights(_Weights):
  """Stage 4 (EM) encoder-step loss weights."""

  masked_rec: float = 0.5
  perceptual: float = 0.25
  stat_reg: float = 0.1
  landmarks: float = 5e-4
  area: float = 0.06


@dataclasses.dataclass(frozen=True)
class UNetWeights(_Weights):
  """Stage 4 (EM) UNet-step loss weights; ``width_normalize`` (the preserve/dist quirk switch of
  :func:`losses.channel_cosine_loss`) and ``neighbour_window`` (the side of the neighbour loss's
  search window, :func:`losses.neighbour_loss`) are settings, not weights."""

  binary: float = 10.0
  area: float = 0.5
  preserve: float = 0.25
  dist: float = 3.0
  neighbour: float = 15.0
  width_normalize: bool = False
  neighbour_window: int = 5

  def as_dict(self) -> dict[str, float]:
    settings = ("width_normalize", "neighbour_window")
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in settings}


@dataclasses.dataclass(frozen=True)
class FocusLossWeights:
  """All loss weightings of the FOCUS training stages (SPEC §7), in one place.

  ``FocusLossWeights().encoder.total({'masked_rec': ..., 'perceptual': ..., ...})`` gives the
  weighted loss of one stage; a missing or extra term raises ``ValueError``. Training builds it
  from ``config.loss`` with :func:`weights_from_config`.
  """

  stage1: Stage1Weights = dataclasses.field(default_factory=Stage1Weights)
  unet_pretrain: UNetPretrainWeights = dataclasses.field(default_factory=UNetPretrainWeights)
  encoder: EncoderWeights = dataclasses.field(default_factory=EncoderWeights)
  unet: UNetWeights = dataclasses.field(default_factory=UNetWeights)


def weights_from_config(loss) -> FocusLossWeights:
  """The weights of ``config.loss`` (an ``ml_collections.ConfigDict`` or a plain dict)."""
  loss = loss.to_dict() if hasattr(loss, "to_dict") else dict(loss)
  return FocusLossWeights(
    stage1=Stage1Weights(**loss["stage1"]),
    unet_pretrain=UNetPretrainWeights(**loss["unet_pretrain"]),
    encoder=EncoderWeights(**loss["em_encoder"]),
    unet=UNetWeights(
      **loss["em_unet"],
      width_normalize=loss["width_normalize"],
      neighbour_window=loss["neighbour_window"],
    ),
  )


# --------------------------------------------------------------------------------------------
# Networks, used functionally.


@dataclasses.dataclass(frozen=True)
class Networks:
  """Static graph definitions (hashable: part of the compiled programs, not of the state)."""

  encoder: nnx.GraphDef
  unet: nnx.GraphDef
  arcface: nnx.GraphDef | None


def split(module: nnx.Module):
  """``(graphdef, {'params': ..., 'rest': ...})`` of an NNX module."""
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  return graphdef, {"params": params, "rest": rest}


def merge(graphdef: nnx.GraphDef, part: dict, train: bool) -> nnx.Module:
  # copy=True: fresh Variables in the current trace. BatchNorm updates its statistics in place,
  # which NNX only allows for variables created at the trace level that mutates them.
  module = nnx.merge(graphdef, part["params"], part["rest"], copy=True)
  module.train() if train else module.eval()
  return module


def _rest(module: nnx.Module):
  return nnx.split(module, nnx.Param, ...)[2]


# --------------------------------------------------------------------------------------------
# The stage objectives (batch: image (B, H, W, 3), landmarks (B, 68, 2)).


def _render(frozen, coeffs, image):
  return pipeline.render_batch(frozen["model"], coeffs, image.shape[1], image.shape[2])


def _arcface(nets: Networks, frozen, images, landmarks):
  net = merge(nets.arcface, frozen["arcface"], train=False)
  return net(arcface_align.align_faces(images, landmarks))


def stage1_loss(enc_part, batch, frozen, nets: Networks, weights: Stage1Weights):
  """Stage-1 autoencoder loss; returns ``(total, (new encoder rest, metrics))``."""
  image = batch["image"]
  encoder = merge(nets.encoder, enc_part, train=True)
  coeffs = encoder(image)
  out = _render(frozen, coeffs, image)
  photometric, inliers = losses.robust_photometric(image, out.image, out.mask)
  terms = {
    "photometric": photometric,
    "stat_reg": losses.statistical_regularizer(coeffs.shape, coeffs.expression, coeffs.color),
    "landmarks": losses.landmark_loss(
      batch["landmarks"], out.landmarks, frozen["landmark_weights"]
    ),
    "perceptual": jnp.float32(0.0),
  }
  if nets.arcface is not None:
    terms["perceptual"] = losses.perceptual_loss(
      _arcface(nets, frozen, out.image, out.landmarks).deep,
      _arcface(nets, frozen, image, batch["landmarks"]).deep,
    )
  total = weights.total(terms)
  scalars = {
    **terms,
    "loss": total,
    "inlier_fraction": jnp.mean(inliers),  # of all pixels (the face covers a part)
    # Of the rendered face's pixels: the share the reconstruction explains.
    "face_inlier_fraction": jnp.sum(inliers) / jnp.maximum(jnp.sum(out.mask), 1.0),
  }
  return total, (_rest(encoder), scalars)


def _frozen_render(enc_part, batch, frozen, nets: Networks):
  encoder = merge(nets.encoder, enc_part, train=False)
  coeffs = jax.lax.stop_gradient(encoder(batch["image"]))
  return coeffs, jax.lax.stop_gradient(_render(frozen, coeffs, batch["image"]))


def unet_pretrain_loss(unet_part, enc_part, batch, frozen, nets: Networks, key):
  """UNet pretraining on the frozen stage-1 model's occlusion masks (correct BCE on logits)."""
  image = batch["image"]
  _, out = _frozen_render(enc_part, batch, frozen, nets)
  _, labels = losses.robust_photometric(image, out.image, out.mask)
  network = merge(nets.unet, unet_part, train=True)
  logits = network.logits(out.image, image, rngs=nnx.Rngs(dropout=key))[..., 0]
  bce = losses.binary_cross_entropy_with_logits(logits, labels)
  return bce, (_rest(network), {"bce": bce, "loss": bce, "label_fraction": jnp.mean(labels)})


def em_encoder_loss(enc_part, unet_part, batch, frozen, nets: Networks, weights, soft_area):
  """EM encoder step: the UNet (inference mode, no gradient) masks the reconstruction."""
  image = batch["image"]
  encoder = merge(nets.encoder, enc_part, train=True)
  coeffs = encoder(image)
  out = _render(frozen, coeffs, image)
  network = merge(nets.unet, unet_part, train=False)
  # The UNet gets a detached render, so no tangent enters it and no backward pass through it is
  # built (the original ran one and discarded its gradients); its mask is a constant here.
  visible = jax.lax.stop_gradient(network(jax.lax.stop_gradient(out.image), image)[..., 0])
  render_mask = out.soft_mask if soft_area else out.mask
  terms = {
    "masked_rec": losses.masked_reconstruction(image, out.image, out.mask * visible),
    "perceptual": jnp.float32(0.0),
    "stat_reg": losses.statistical_regularizer(coeffs.shape, coeffs.expression, coeffs.color),
    "landmarks": losses.landmark_loss(
      batch["landmarks"], out.landmarks, frozen["landmark_weights"]
    ),
    "area": losses.area_loss(render_mask, visible),
  }
  if nets.arcface is not None:
    terms["perceptual"] = losses.perceptual_loss(
      _arcface(nets, frozen, out.image, out.landmarks).deep,
      _arcface(nets, frozen, image, batch["landmarks"]).deep,
    )
  total = weights.total(terms)
  return total, (_rest(encoder), {**terms, "loss": total})


def em_unet_loss(unet_part, enc_part, batch, frozen, nets: Networks, weights, key):
  """EM UNet step: the encoder runs in inference mode; the UNet segments its render's misfits."""
  image = batch["image"]
  _, out = _frozen_render(enc_part, batch, frozen, nets)
  network = merge(nets.unet, unet_part, train=True)
  visible = network(out.image, image, rngs=nnx.Rngs(dropout=key))[..., 0]
  m = out.mask * visible
  terms = {
    "binary": losses.binary_loss(m),
    "area": losses.area_loss(out.mask, visible),
    "preserve": jnp.float32(0.0),
    "dist": jnp.float32(0.0),
    "neighbour": losses.neighbour_loss(image, out.image, m, weights.neighbour_window),
  }
  if nets.arcface is not None:
    face_id = merge(nets.arcface, frozen["arcface"], train=False)

    def shallow(images, landmarks):  # stem + first stage only: no deep layers to prune
      return face_id.shallow(arcface_align.align_faces(images, landmarks))

    lm = batch["landmarks"]
    # I*M's features feed both terms: computed once, so one backward pass through them, not two.
    masked = shallow(image * m[..., None], lm)
    terms["preserve"] = losses.preserve_loss(
      jax.lax.stop_gradient(shallow(image, lm)), masked, weights.width_normalize
    )
    terms["dist"] = losses.dist_loss(
      shallow(out.image * m[..., None], out.landmarks), masked, weights.width_normalize
    )
  total = weights.total(terms)
  return total, (_rest(network), {**terms, "loss": total, "visible_fraction": jnp.mean(visible)})
