"""Every configuration key of focus_jax training, declared once with its meaning.

Config files in ``configs/`` start from :func:`base` and override what their stage needs; they
are loaded with ``config_flags.DEFINE_config_file(..., lock_config=True)`` so a mistyped
``--config.x=...`` fails at start-up. Durations end in ``_steps``.
"""

from __future__ import annotations

import ml_collections

STAGES = ("pretrain", "unet_pretrain", "em", "adapt")


def base() -> ml_collections.ConfigDict:
  """The default configuration: FOCUS's numbers (SPEC §7) on the embedded model."""
  c = ml_collections.ConfigDict()
  c.stage = "pretrain"  # one of STAGES
  c.seed = 0  # parameter init, shuffling, augmentation and dropout; folded with the step

  c.model = ml_collections.ConfigDict()
  c.model.spec = "embedded"  # embedded | embedded-bfm | ict | ict-narrow | path to a BFM 2017 h5
  c.model.crop = ""  # "" (whole mesh) or "face" (focus_jax's sphere crop, for the real BFM)
  c.model.n_shape = 80  # shape components used (SPEC §1)
  c.model.n_exp = 64  # expression components used
  c.model.n_color = 80  # color components used

  c.data = ml_collections.ConfigDict()
  c.data.image_root = ""  # an image_root (SPEC §8); "" makes a synthetic one in the workdir
  c.data.synthetic_num = 240  # images of the synthetic image_root when image_root is ""
  c.data.split = "train"  # CSV split to train on (adapt: the test split)
  c.data.image_size = 224  # aligned image side in pixels (FOCUS: 224)
  c.data.augment = True  # shift/scale/rotation/flip augmentation (SPEC §7)

  c.encoder = ml_collections.ConfigDict()
  c.encoder.depth = 50  # ResNet depth (FOCUS: 50)
  c.encoder.width = 64  # ResNet stem width (64; small values for CPU smoke runs)
  c.encoder.init = ""  # .npz of ImageNet ResNet weights (python -m focus_jax.convert); "": random

  c.unet = ml_collections.ConfigDict()
  c.unet.base = 64  # width of the first UNet block (FOCUS: 64)

  c.arcface = ml_collections.ConfigDict()
  c.arcface.weights = ""  # .npz of ArcFace IResNet weights; "": perceptual losses disabled
  c.arcface.depth = 50  # IResNet depth of those weights

  c.soft_area = True  # encoder area term on the soft silhouette (original: hard mask, no gradient)
  c.init_from = ""  # workdir of an earlier stage whose latest checkpoint initialises the networks

  c.optim = ml_collections.ConfigDict()
  c.optim.encoder_lr = 0.1  # Adadelta learning rate of the encoder
  c.optim.encoder_decay = 0.99  # multiplied into the encoder lr every decay_every_steps
  c.optim.unet_lr = 0.03  # Adadelta learning rate of the UNet
  c.optim.unet_decay = 0.99  # multiplied into the UNet lr every decay_every_steps
  c.optim.decay_every_steps = 5000  # lr step-decay period (SPEC §7)

  c.em = ml_collections.ConfigDict()
  c.em.period_steps = 30000  # length of one EM period
  c.em.unet_steps = 5000  # the first unet_steps of every period update the UNet only

  c.batch_size = 12  # global batch (FOCUS: 12), split over all devices
  c.total_steps = 300000  # training steps of this stage
  c.log_every_steps = 100  # metrics written every so many steps
  c.checkpoint_every_steps = 1000  # checkpoint interval (at most this much work is lost)
  c.keep_checkpoints = 3  # checkpoints kept on disk
  return c


def smoke(config: ml_collections.ConfigDict) -> None:
  """Shrinks ``config`` in place to a CPU smoke run: tiny networks, few steps, synthetic data."""
  config.data.synthetic_num = 24
  config.encoder.depth = 18
  config.encoder.width = 8
  config.unet.base = 4
  config.batch_size = 4
  config.total_steps = 6
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 2


def apply_variant(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """Applies the ``:arg`` variant of a config file: ``''`` (as is) or ``'smoke'``."""
  if arg == "smoke":
    smoke(config)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (expected '' or 'smoke')")
  return config
