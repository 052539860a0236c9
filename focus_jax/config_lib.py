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
  c.data.synthetic_split = (0.8, 0.1, 0.1)  # train, val, test fractions of synthetic images
  # Seed of the synthetic faces, apart from ``seed``: training seeds compare on the same faces.
  c.data.synthetic_seed = 0
  c.data.split = "train"  # CSV split to train on (adapt: the test split)
  c.data.image_size = 224  # training side in pixels (FOCUS: 224): aligned faces are resized to it
  c.data.augment = True  # shift/scale/rotation/flip augmentation (SPEC §7)
  c.data.source = "auto"  # tfds | memory | auto (tfds for photo roots, memory for synthetic)
  c.data.tfds_dir = ""  # where prepared ArrayRecord datasets go; "": <workdir>/tfds
  c.data.bad_rows = "fail"  # CSV rows with problems: "fail" (stop, name them) or "skip"

  c.encoder = ml_collections.ConfigDict()
  c.encoder.depth = 50  # ResNet depth (FOCUS: 50)
  c.encoder.width = 64  # ResNet stem width (64; small values for CPU smoke runs)
  c.encoder.init = ""  # .npz of ImageNet ResNet weights (python -m focus_jax.convert); "": random

  c.unet = ml_collections.ConfigDict()
  c.unet.base = 64  # width of the first UNet block (FOCUS: 64)

  c.arcface = ml_collections.ConfigDict()
  c.arcface.weights = ""  # .npz of ArcFace IResNet weights (architecture inside); "": disabled

  c.soft_area = True  # encoder area term on the soft silhouette (original: hard mask, no gradient)
  c.nonfinite = "stop"  # non-finite loss or update: "stop" (names the last good checkpoint) or
  #                       "skip_batch" (keep the last good state, count it, go on)
  c.init_from = ""  # workdir of an earlier stage whose latest checkpoint initialises the networks

  # Loss weights of every stage (SPEC §7); read by focus_jax.objectives.weights_from_config.
  c.loss = ml_collections.ConfigDict()
  c.loss.stage1 = ml_collections.ConfigDict()
  c.loss.stage1.photometric = 0.5  # occlusion-robust photometric term
  c.loss.stage1.stat_reg = 0.1  # statistical regulariser of shape/expression/color
  c.loss.stage1.landmarks = 5e-4  # 68-landmark term (px^2)
  c.loss.stage1.perceptual = 0.25  # ArcFace identity term (0 without ArcFace weights)
  c.loss.unet_pretrain = ml_collections.ConfigDict()
  c.loss.unet_pretrain.bce = 1.0  # binary cross-entropy to the stage-1 pseudo labels
  c.loss.em_encoder = ml_collections.ConfigDict()
  c.loss.em_encoder.masked_rec = 0.5  # reconstruction inside render * UNet mask
  c.loss.em_encoder.perceptual = 0.25  # ArcFace identity term
  c.loss.em_encoder.stat_reg = 0.1  # statistical regulariser
  c.loss.em_encoder.landmarks = 5e-4  # landmark term
  c.loss.em_encoder.area = 0.06  # penalises render area the UNet marks occluded
  c.loss.em_unet = ml_collections.ConfigDict()
  c.loss.em_unet.binary = 10.0  # pushes the UNet mask towards 0/1
  c.loss.em_unet.area = 0.5  # penalises marking the face occluded
  c.loss.em_unet.preserve = 0.25  # ArcFace features of I vs I*M (shallow)
  c.loss.em_unet.dist = 3.0  # ArcFace features of R*M vs I*M (shallow)
  c.loss.em_unet.neighbour = 15.0  # neighbourhood colour match of R*M vs I*M
  c.loss.landmark_weights = "model"  # model (20 on nose 28..30 and inner lips, SPEC §1) | uniform
  c.loss.width_normalize = False  # preserve/dist: the original's width-axis L2 quirk (SPEC §6)
  # Neighbour loss: side of the search window in pixels (SPEC §6). The :cpu recipe keeps 5 at
  # 96 px: 3 (SPEC's window scaled from 224 px) moved along the same EM occluder IoU / false-alarm
  # curve (0.546 / 5.8% against 0.537 / 5.6% with 5), and so did 7 (0.427 / 2.3% against 0.524 /
  # 4.0% with 5, on the quick start's current recipe). Again on 2 December 2026, with 3 on the
  # quick start's stage 1: 0.595 / 6.1% at area 0.9 and 0.577 / 5.6% at 1.0 against 5's 0.524 /
  # 4.0% at 0.9, but on a 6000-step stage 1 at area 0.5 0.611 / 8.6% against 5's 0.573 / 4.9%
  # (and 0.605 / 7.8% at area 0.3): the same frontier within run-to-run noise. Hair strands,
  # which EM misses most, rose from 0.37 to 0.42 and 0.38 only. Window 1 (the plain per-pixel
  # residual, which forgives hands and strands least: README), on the quick start's stage-1 and
  # UNet-pretraining checkpoints at area 0.9 / 1.5 / 2.0 / 2.5 / 4.0: 0.508 / 21.9%, 0.588 / 7.3%,
  # 0.560 / 5.4%, 0.488 / 3.3%, 0.265 / 0.7%, against 5's 0.524 / 4.0% at 0.9: the same frontier
  # again (hands 0.26-0.38 and hair 0.38-0.42 at 1.5-2.5, against 0.29 and 0.37).
  c.loss.neighbour_window = 5

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adadelta"  # adadelta (SPEC §7: rho 0.9, eps 1e-6) | adam
  c.optim.encoder_lr = 0.1  # learning rate of the encoder
  c.optim.encoder_decay = 0.99  # multiplied into the encoder lr every decay_every_steps
  c.optim.unet_lr = 0.03  # learning rate of the UNet
  c.optim.unet_decay = 0.99  # multiplied into the UNet lr every decay_every_steps
  c.optim.decay_every_steps = 5000  # lr step-decay period (SPEC §7)
  c.optim.schedule = "step"  # step (SPEC §7: the decays above) | cosine (to 0 at total_steps)
  c.optim.warmup_steps = 0  # linear warm-up over the first steps of the stage
  c.optim.clip_norm = 0.0  # clip gradients to this global norm first (0: off)

  c.em = ml_collections.ConfigDict()
  c.em.period_steps = 30000  # length of one EM period
  c.em.unet_steps = 5000  # the first unet_steps of every period update the UNet only

  c.batch_size = 12  # global batch (FOCUS: 12), split over all devices
  c.total_steps = 300000  # training steps of this stage
  c.log_every_steps = 100  # metrics written every so many steps
  c.eval_every_steps = 5000  # validation (val/* metrics and an image grid); 0: never
  c.eval_split = "val"  # CSV split of the validation
  c.eval_batches = 8  # validation batches per evaluation (bounds its cost)
  c.checkpoint_every_steps = 1000  # checkpoint interval (at most this much work is lost)
  c.keep_checkpoints = 3  # checkpoints kept on disk
  return c


# The learning rate where stage 1 ended (0.99 ** 60 after 300k steps) times 0.8: EM's lr0.
EM_LR0 = 0.1 * 0.99**60 * 0.8


def stage_config(stage: str, arg: str = "") -> ml_collections.ConfigDict:
  """The configuration of a training stage (SPEC §7) with its ``:arg`` variant applied.

  ``configs/<stage>.py`` is ``get_config = lambda arg: stage_config(<stage>, arg)``; the numbers
  live here so that the package (e.g. ``focus_jax.quickstart``) can build them too.
  """
  c = base()
  if stage == "pretrain":
    c.total_steps = 300000
    c.optim.encoder_lr, c.optim.encoder_decay = 0.1, 0.99
  elif stage == "unet_pretrain":
    c.total_steps = 30000
    c.optim.unet_lr, c.optim.unet_decay = 0.03, 0.99
  elif stage in ("em", "adapt"):
    c.total_steps = 130 * 30000 // 12  # about 130 epochs of 30k images at batch 12
    c.optim.encoder_lr, c.optim.encoder_decay = EM_LR0, 0.99
    c.optim.unet_lr, c.optim.unet_decay = 0.06 * EM_LR0, 0.95
    c.em.period_steps, c.em.unet_steps = 30000, 5000
  else:
    raise ValueError(f"unknown stage {stage!r}: expected one of {STAGES}")
  c.stage = stage
  apply_variant(c, arg)
  if stage in ("em", "adapt") and arg == "smoke":
    c.em.period_steps, c.em.unet_steps = 4, 1
  if stage == "adapt":
    c.data.split = "test"
    c.data.augment = False
    if arg != "smoke":
      c.total_steps = 10000
  # After adapt's 10000 steps: the 2-core recipes adapt with EM's schedule.
  if arg in ("cpu", "cpu-long"):
    _cpu_stage(c)
  if arg == "cpu-long":
    _cpu_long_stage(c)
  return c


def _cpu_stage(c: ml_collections.ConfigDict) -> None:
  """Steps and rates of each stage of the ``:cpu`` recipe (measured on 2 loaded cores)."""
  if c.stage == "pretrain":
    # ~10 min quiet at 96 px. 1200 steps: EM occluder IoU 0.484 but false alarms 9% (the skin
    # residual of the shorter fit looked occluded); 2000: 0.438 and 4.2%, test NME 0.121 -> 0.108.
    # 3000 (quick-start data, with the UNet pretraining below): the encoder under-rotates less
    # (test yaw gain 0.58 -> 0.72), NME 0.096 -> 0.091, 3D 1.63 -> 1.41 mm (mean face 1.43).
    # 3500 against 3000 (one chain each, same data): val NME 0.101 -> 0.098, EM occluder IoU
    # 0.524 -> 0.503 at false alarms 4.0 -> 3.7%, 3D 1.49 -> 1.43 mm, yaw gain 0.74 -> 0.77:
    # within run-to-run noise, for 1.6 more minutes of the 20.
    # 6000 (with 600 UNet-pretraining steps; 2 December 2026 on a machine at about half the
    # speed: stage 1 18 min, the chain 28): test NME 0.095 -> 0.078, MAE 15.2 -> 12.6, robust
    # mask 0.554 / 28% -> 0.604 / 21%, EM (area 0.5) 0.573 / 4.9% ((0.3) 0.605 / 7.8%), 3D 1.33
    # mm (mean face 1.43): better throughout, but EM still no better than its pseudo labels.
    c.total_steps = 3000
    c.optim.encoder_lr = 1e-2  # 2e-3 left yaw underfitted after 400 steps, 5e-3 was better
    # At 0.5 the photometric term barely reached the shared trunk next to the landmark term:
    # the encoder predicted the mean albedo and light (correlation with the truth ~0 for every
    # colour and light coefficient, although the loss gradient pointed at the truth for 84% of
    # the test faces), photometric MAE 29/255, and the robust inlier mask (the UNet's pseudo
    # label) flagged the mis-coloured skin: occluder IoU 0.375. At 5: colour/light correlation
    # 0.45/0.5, MAE 19, IoU 0.48 (2: 0.45). Those were 64 px images; the landmark term is in
    # px^2, so 96 px keeps that balance at 5 * 1.5^2 (at 5 the 96 px encoder again learned
    # little colour, MAE 27, and EM's false alarms rose to 30%). At 20 (quick-start data): the
    # robust mask's occluder IoU 0.597 vs 0.584 but false alarms 32 vs 25%, test NME 0.107 vs
    # 0.091, MAE 15.0 vs 14.0, 3D 1.76 vs 1.54 mm (yaw gain 0.52 vs 0.74): pose came later.
    c.loss.stage1.photometric = 11.25
    c.eval_every_steps = 350
  elif c.stage == "unet_pretrain":
    # 100 steps at 2e-3 stopped at BCE 0.29 and a test occluder IoU of 0.39 against the pseudo
    # labels' 0.56; 300 at 1e-2 (BCE 0.13): 0.50, and EM from there 0.54 instead of 0.41.
    c.total_steps = 300
    c.optim.unet_lr = 1e-2
    c.eval_every_steps = 100
  else:
    c.total_steps = 240  # two EM periods (four: occluder IoU 0.34 -> 0.37, false alarms 10 -> 17%)
    c.data.augment = False  # augmented: occluder IoU 0.492 vs 0.475, false alarms 8.3 vs 6.5%
    # 80 UNet steps in 160-step periods (same encoder steps): occluder IoU / false alarms 0.524 /
    # 4.0% -> 0.465 / 2.8%; the area term only erodes the recall further.
    c.em.period_steps, c.em.unet_steps = 120, 40
    # Both networks start trained. The UNet at 3e-3: 0.537 / 4.5%; the encoder at 3e-3: 0.503 /
    # 3.3% (3D 1.49 -> 1.43 mm, MAE 14.4 -> 14.8); 200 encoder steps per period instead of 80:
    # 0.471 / 2.7% (3D 1.43). Every one lies on the frontier of residual thresholds on this
    # encoder's renders (README), which the masks cannot leave without a better reconstruction.
    c.optim.encoder_lr = c.optim.unet_lr = 1e-3
    c.optim.warmup_steps = 0
    c.eval_every_steps = 120
    # Without ArcFace the UNet objective is 10 binary + 0.5 area + 15 neighbour: marking a face
    # pixel occluded pays when its neighbour residual r exceeds w_area / (15 f) (f ~ 0.4: face
    # fraction of the image), r > 0.08 at 0.5, below this encoder's residual on skin, so the
    # UNet would erase the face. With the stage-1 encoder of photometric weight 0.5, 1.5
    # (r > 0.25) was too timid (recall 0.36) and 1.0 raised false alarms to 10%; with weight 5
    # the skin residual is lower: 1.2 gave recall 0.35 (false alarms 2.6%), 0.8 recall 0.47
    # (false alarms 4.8%). With the 3000-step stage 1 and the 300-step UNet pretraining (test
    # occluder IoU / false alarms): 0.6: 0.565 / 8.4%, 0.8: 0.537 / 5.6%, 0.9: 0.521 / 4.9%,
    # 1.0: 0.485 / 4.1%.
    c.loss.em_unet.area = 0.9


def _cpu_long_stage(c: ml_collections.ConfigDict) -> None:
  """What ``:cpu-long`` changes per stage on top of :func:`_cpu_stage`: 4x the stage-1 steps, 3x
  the UNet-pretraining steps, and the EM area weight that suits the better reconstruction."""
  if c.stage == "pretrain":
    # One chain (1 December 2026, 2 cores at matmul ~0.06-0.09 s; stage 1 took 19 min): stage-1
    # test NME 0.072 against the mean face's 0.092 at its pose, yaw gain 0.86 (3000 steps on 450
    # faces: 0.69), photometric MAE 11.1 (15.2), robust-mask occluder IoU 0.635 at 18% false
    # alarms (0.554 at 28%); val NME 0.098 / 0.088 / 0.082 / 0.081 at steps 3000 / 6000 / 9000
    # / 12000.
    c.total_steps = 12000
    c.eval_every_steps = 1500
  elif c.stage == "unet_pretrain":
    # On that stage 1, 300 steps left the UNet at test occluder IoU 0.501 (false alarms 20%)
    # against its pseudo labels' 0.635 (18%); 900: 0.567 (17%), and EM from there 0.590 / 2.1%
    # instead of 0.562 / 3.2% (area 0.5).
    c.total_steps = 900
    c.eval_every_steps = 300
  elif c.stage in ("em", "adapt"):
    # Test occluder IoU / false alarms after EM, from the 300-step UNet pretraining: area 0.9:
    # 0.467 / 1.3%, 0.5: 0.562 / 3.2%, 0.3: 0.584 / 5.2%; from the 900-step one: 0.5: 0.590 /
    # 2.1%, 0.3: 0.642 / 3.9%. The skin residual is smaller than the quick start's, so a lower
    # weight already keeps the face; EM's val IoU fell from step 120 to 240 at 0.9.
    c.loss.em_unet.area = 0.3


def cpu_long(config: ml_collections.ConfigDict) -> None:
  """:func:`cpu` with 3x the faces (1,800: 1,350 to train, 360 to test): the quick start for a
  machine that can give it ~30-45 minutes instead of 20 (stage steps in :func:`_cpu_long_stage`).
  The 20-minute recipe is bound by compute, not by the method: with this one 3D error falls
  below the mean face's."""
  cpu(config)
  config.data.synthetic_num = 1800


def smoke(config: ml_collections.ConfigDict) -> None:
  """Shrinks ``config`` in place to a CPU smoke run: tiny networks, few steps, synthetic data."""
  config.data.synthetic_num = 24
  config.encoder.depth = 18
  config.encoder.width = 8
  config.unet.base = 4
  config.batch_size = 4
  config.total_steps = 6
  config.log_every_steps = 2
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 2


def cpu(config: ml_collections.ConfigDict) -> None:
  """Changes ``config`` in place to the 2-CPU-core recipe shared by every stage: the whole chain
  (synthetic data, stage 1, UNet pretraining, EM, evaluation) in 9-18 minutes. Per-stage steps
  and rates are in :func:`stage_config`.

  SPEC §7 assumes an accelerator, ResNet-50 and 300k Adadelta steps; at a few hundred steps
  Adadelta barely moves (landmarks 1.1e4 -> 7e3 px^2 in 280 steps), hence these changes:
  """
  # 600 faces: 450 to train (240 underfit the pose), 120 to test (>= 100 for the targets).
  # 1800 (1650 to train, the same test faces): test NME 0.089 -> 0.085 and 3D 1.49 -> 1.45 mm
  # after EM, but EM occluder IoU 0.524 -> 0.488 at false alarms 4.0 -> 2.8% (the same
  # frontier) and photometric MAE 14.4 -> 15.4, for ~30 s more of generation.
  config.data.synthetic_num = 600
  config.data.synthetic_split = (0.75, 0.05, 0.2)
  # Faces ~60 px wide. At 64 px (faces ~40 px; a chain step cost about the same) eyes, brows and
  # mouth were a few pixels each: EM occluder IoU 0.422 vs 0.438, test NME 0.128 vs 0.108 (96 px
  # with 2000 stage-1 steps).
  config.data.image_size = 96
  # SPEC §7's flips, shifts, scales and rotations, although the generator samples pose, shift
  # and scale: 450 faces underfit the pose (with stat_reg below, on the quick-start data: stage-1
  # occluder IoU 0.504 -> 0.555, test NME 0.123 -> 0.096, 3D 1.82 -> 1.63 mm). EM runs without.
  config.data.augment = True
  config.encoder.depth = 18  # ResNet-50 is far too slow on 2 cores
  # Encoder forward+backward ~0.08 s per step at 64 px, batch 12. Width 24 with 2500 stage-1
  # steps (about the time of 3000 at 16): stage-1 occluder IoU 0.575 vs 0.584 at false alarms
  # 32 vs 25%, test NME 0.102 vs 0.091, MAE 15.6 vs 14.0, 3D 1.69 vs 1.54 mm.
  config.encoder.width = 16
  # Without the stem's max-pool (final map 6x6 instead of 3x3 at 96 px; stage 1 ~1.7x slower,
  # chain 499 -> 705 s): stage-1 NME 0.095 -> 0.089 and robust-mask occluder IoU 0.554 -> 0.592,
  # but EM occluder IoU 0.520 -> 0.513 (false alarms 5.2 -> 3.5%) and 3D 1.47 -> 1.63 mm.
  config.unet.base = 8  # 8..128 channels suffice for the synthetic occluders
  config.optim.name = "adam"  # Adadelta at lr 0.1 needs ~1e5 steps; Adam converges in hundreds
  config.optim.schedule = "cosine"  # annealed to 0 within the short stage
  config.optim.warmup_steps = 20  # BatchNorm statistics settle before large Adam steps
  # The model's landmark weights (20 on 11 points: 400x in the square) leave the jaw, brows and
  # eyes ~1% of the term, and a short run never learned yaw (renders stayed frontal; test NME
  # 0.144 -> 0.114 with uniform weights). Uniform px^2 at 64 px are ~65x smaller than weighted
  # ones at 224 px, hence 0.5 instead of 5e-4: landmarks dominate early, so pose comes first.
  config.loss.landmark_weights = "uniform"
  # Stage 1 at 1.0 instead (quick-start data): test NME 0.091 -> 0.082 and 3D 1.54 -> 1.49 mm,
  # but photometric MAE 14.0 -> 15.0 and the robust mask's occluder IoU 0.584 -> 0.545 at false
  # alarms 25 -> 27%: the masks, limited by the skin residual, lose more than the landmarks gain.
  config.loss.stage1.landmarks = 0.5
  config.loss.em_encoder.landmarks = 0.5
  # 100x SPEC's prior. Against 0.5 x mean px^2 the regulariser (sum alpha^2 / 224) is a Gaussian
  # prior with landmark noise sqrt(0.1 / 224 / (0.5 / 136)) = 0.35 px at 96 px, but this
  # encoder's landmarks are ~3.5 px off: at 10 the balance matches (3.5 px), as a Bayes fit
  # wants. MAP fits of pose, shape and expression to ground-truth landmarks with 6 px noise at
  # 224 px: 3D 1.08 mm with the matched prior, 5.3 mm with SPEC's (mean face 1.48). Stage 1
  # (augmented) on held-out faces: yaw gain (slope of predicted on true yaw) 0.42 -> 0.55, 3D
  # 1.88 -> 1.69 mm.
  # Shape and expression held at zero for the first 600 stage-1 steps (pose first, so that the
  # shape cannot make up for it): yaw gain 0.71 -> 0.74, pitch 0.27 either way, 3D 1.47 -> 1.48 mm,
  # EM occluder IoU 0.520 -> 0.495 at false alarms 5.2 -> 4.0%: the pose is not learned better.
  config.loss.stage1.stat_reg = 10.0
  config.loss.em_encoder.stat_reg = 10.0
  config.log_every_steps = 25
  config.checkpoint_every_steps = 250  # a save costs ~1 s here
  config.keep_checkpoints = 1


def apply_variant(config: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """Applies the ``:arg`` variant of a config file: ``''`` (as is), ``'smoke'``, ``'cpu'`` or
  ``'cpu-long'``."""
  if arg == "smoke":
    smoke(config)
  elif arg == "cpu":
    cpu(config)
  elif arg == "cpu-long":
    cpu_long(config)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (expected '', 'smoke', 'cpu' or 'cpu-long')")
  return config
