"""Data for focus_jax: the original layout, alignment, augmentation, synthetic faces, pipelines.

Modules:

- ``layout``: the ``image_root`` layout (``Dataset/`` photos, optional visibility masks,
  ``{train,val,test,all}_landmarks.csv``), validated up front with file and row in every error.
- ``alignment``: Deep3DFaceRecon's 5-point alignment to 224 x 224 and its inverse (paste back).
- ``augment``: training augmentation (shift, scale, rotation, flip with the iBUG-68 permutation),
  deterministic for ``(seed, epoch, index)``.
- ``examples``: one example dict per CSV row (aligned image, landmarks, mask, ground truth).
- ``tfds_builder``: the ArrayRecord dataset of an ``image_root``, written without TensorFlow.
- ``pipeline``: grain reading, process sharding, global ``jax.Array`` batches; in-memory source.
- ``occluders`` and ``synthetic``: rendered faces with occluders and exact ground truth.
- ``toy``: tiny image roots with known landmarks for tests and benchmarks.

The landmark detector that builds a layout from a folder of photos is ``focus_jax.prepare``.
TensorFlow Datasets and grain are imported only by ``tfds_builder`` and inside ``pipeline``'s
functions, so layout, alignment and augmentation load without them.
"""
