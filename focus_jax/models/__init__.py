"""Flax NNX networks of FOCUS: ResNet encoder with 3DMM head, occlusion UNet, ArcFace IResNet.

Conventions shared by every network here:

- Images are NHWC float32 in [0, 1]; each network does its own input scaling (none for the
  encoder and the UNet, ``2x - 1`` for ArcFace), so callers never normalise.
- Modules are defined with ``__init__(..., *, rngs)`` and used functionally in training
  (``graphdef, params, rest = nnx.split(module, nnx.Param, ...)``). ``BatchNorm`` and
  ``Dropout`` follow NNX's modes: ``module.eval()`` / ``nnx.view(module, deterministic=True,
  use_running_average=True)`` for inference.
- Sub-module attribute names follow the PyTorch reference implementations (torchvision ResNet,
  insightface IResNet) so that ``focus_jax.convert`` maps weights by name; the FOCUS UNet uses
  its own names and a rename table in ``convert``.
- Weights are stored in the ``.npz`` format of ``focus_jax.models.weights`` (save, read, load,
  rebuild a network from its ``__arch__`` record); nothing here imports torch.
"""
