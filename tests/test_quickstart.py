"""The quick-start chain: its configs, and a second run that resumes instead of restarting."""

import os

import pytest
from conftest import SMOKE_CHAIN, optimizations

from focus_jax import checkpoint, config_lib, metric_writer, quickstart
from focus_jax.workdir import CHAIN

# The trained smoke chain (conftest) is built once per xdist worker: its users share one.
pytestmark = pytest.mark.xdist_group("smoke_chain")


def test_chain_configs_link_the_stages(tmp_path):
  configs = quickstart.chain_configs(str(tmp_path), "cpu", {"total_steps": 3})
  assert list(configs) == ["pretrain", "unet_pretrain", "em"]
  roots = {c.data.image_root for c in configs.values()}
  assert roots == {str(tmp_path / "synthetic")}
  assert configs["pretrain"].init_from == ""
  assert configs["unet_pretrain"].init_from == str(tmp_path / "pretrain")
  assert configs["em"].init_from == str(tmp_path / "unet_pretrain")
  assert all(c.total_steps == 3 for c in configs.values())
  adapted = quickstart.chain_configs(str(tmp_path), "cpu", adapt=True)
  assert list(adapted) == ["pretrain", "unet_pretrain", "em", "adapt"]
  assert adapted["adapt"].init_from == str(tmp_path / "em")
  assert adapted["adapt"].data.split == "test"
  # The full variant is the SPEC §7 stage configs.
  full = quickstart.chain_configs(str(tmp_path), "full")["em"]
  assert full.optim.encoder_lr == config_lib.stage_config("em").optim.encoder_lr
  # cpu-long: the cpu recipe with 4x the stage-1 steps, 3x the UNet pretraining, 3x the faces
  # and a lower EM area weight; the same networks and EM schedule.
  short = quickstart.chain_configs(str(tmp_path), "cpu")
  long = quickstart.chain_configs(str(tmp_path), "cpu-long")
  assert long["pretrain"].total_steps == 4 * short["pretrain"].total_steps
  assert long["unet_pretrain"].total_steps == 3 * short["unet_pretrain"].total_steps
  assert long["em"].total_steps == short["em"].total_steps
  assert long["em"].data.synthetic_num == 3 * short["em"].data.synthetic_num
  assert long["em"].loss.em_unet.area < short["em"].loss.em_unet.area
  assert long["em"].encoder.to_dict() == short["em"].encoder.to_dict()
  with pytest.raises(ValueError, match="unknown variant"):
    quickstart.chain_configs(str(tmp_path), "huge")


def test_training_seed_keeps_the_synthetic_faces(tmp_path, monkeypatch):
  """``--seed`` reaches every stage's ``seed``; the faces follow ``data.synthetic_seed`` only."""
  from focus_jax import train
  from focus_jax.data import synthetic

  calls = {}
  monkeypatch.setattr(quickstart, "run", lambda *a, **k: calls.update(k))
  assert quickstart.main(["--workdir", str(tmp_path), "--seed", "2"]) == 0
  assert calls["overrides"] == {"seed": 2}
  configs = quickstart.chain_configs(str(tmp_path), "cpu", calls["overrides"])
  assert {c.seed for c in configs.values()} == {2}

  seeds = []
  monkeypatch.setattr(synthetic, "generate", lambda *a, **k: seeds.append(k["seed"]))
  for config in (configs["pretrain"], config_lib.stage_config("pretrain", "cpu")):
    train.ensure_synthetic(config, str(tmp_path / "none"))
  config = config_lib.stage_config("pretrain", "cpu")
  config.data.synthetic_seed = 7
  train.ensure_synthetic(config, str(tmp_path / "none"))
  assert seeds == [0, 0, 7]


def test_second_run_resumes_instead_of_restarting(smoke_chain):
  workdir, _ = smoke_chain

  def snapshot():
    out = {}
    for stage in CHAIN:
      directory = os.path.join(workdir, stage)
      records = metric_writer.read_jsonl(os.path.join(directory, "metrics.jsonl"))
      out[stage] = (
        checkpoint.latest_step(os.path.join(directory, "checkpoints")),
        len([r for r in records if "step" in r]),
      )
    return out

  before = snapshot()
  assert all(step == 2 and logged == 2 for step, logged in before.values())
  data = os.path.join(workdir, "synthetic", "all_landmarks.csv")
  stamp = os.stat(data).st_mtime_ns
  quickstart.run(workdir, "smoke", SMOKE_CHAIN, evaluate=False)
  assert snapshot() == before  # no stage trained again
  assert os.stat(data).st_mtime_ns == stamp  # the data was not regenerated


@pytest.mark.slow  # the README's quick start itself: about 16 minutes on 2 idle cores
def test_quickstart_meets_the_targets(tmp_path):
  """The targets of the "prove that it works" issue, on the chain's 120 synthetic test faces."""
  import time

  start = time.time()
  with optimizations(True):  # the README's run, as a user gets it
    record = quickstart.run(str(tmp_path / "quickstart"), "cpu")
  minutes = (time.time() - start) / 60
  masks, lm, s3d = record["masks"], record["landmarks"], record["shape_3d"]
  assert record["num_images"] >= 100
  assert minutes <= 20, f"chain took {minutes:.1f} min"
  assert masks["em"]["occluder_iou"] >= 0.5
  assert masks["em"]["occluder_iou"] >= masks["stage1"]["occluder_iou"] + 0.10
  assert masks["em"]["visible_accuracy"] >= masks["all_visible"]["visible_accuracy"] + 0.05
  assert masks["em"]["false_alarm"] < 0.05
  assert s3d["prediction"]["median_mm"] <= 0.8 * s3d["mean_face"]["median_mm"]
  assert lm["em"]["nme_median"] < lm["mean_face"]["nme_median"]
