"""Training a user can trust: non-finite steps, the workdir lock, signals, bad starts."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import chex
import jax
import pytest
from test_multiprocess import _free_port
from test_train import _smoke

from focus_jax import checkpoint, lock, metric_writer, train

# The trained smoke chain (conftest) is built once per xdist worker: its users share one.
pytestmark = pytest.mark.xdist_group("smoke_chain")


def _checkpoint_states(workdir, config):
  """Every checkpoint on disk, restored into the run's state layout."""
  model = train.load_model(config)
  _, parts, _, _ = train.build_networks(config, model.sizes)
  target = checkpoint.abstract(train.init_state(parts, config.optim))
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), 1, 10, async_save=False)
  try:
    return {step: checkpoint.restore(mngr, target, step)[0] for step in mngr.all_steps()}
  finally:
    mngr.close()


def test_nonfinite_stops_naming_the_last_good_checkpoint(image_root, tmp_path):
  workdir = str(tmp_path / "run")
  config = _smoke("pretrain", image_root, 6, checkpoint_every_steps=1)
  config.optim.encoder_lr = 1e30  # the first update is finite but huge; the next loss is not
  with pytest.raises(train.TrainingStopped) as info:
    train.train_and_evaluate(config, workdir)
  message = str(info.value)
  assert "non-finite loss terms" in message and "at step 2" in message
  assert os.path.join(workdir, "checkpoints", "1") in message and "(step 1)" in message
  states = _checkpoint_states(workdir, config)
  assert sorted(states) == [1]
  for state in states.values():
    chex.assert_tree_all_finite(state)
  assert not any(name.endswith("tmp") for name in os.listdir(os.path.join(workdir, "checkpoints")))
  assert not os.path.exists(os.path.join(workdir, lock.LOCK_FILE))  # released on the way out


@pytest.mark.slow  # ~30 s; the stop case covers the in-step check in CI
def test_nonfinite_skip_batch_keeps_the_last_good_state(image_root, tmp_path):
  workdir = str(tmp_path / "run")
  config = _smoke("pretrain", image_root, 4, checkpoint_every_steps=2, nonfinite="skip_batch")
  config.optim.encoder_lr = 1e30
  last = train.train_and_evaluate(config, workdir)
  assert last["skipped"] == 3  # steps 2, 3, 4: the loss of the huge parameters is not finite
  for state in _checkpoint_states(workdir, config).values():
    chex.assert_tree_all_finite(state)


def test_second_process_on_a_workdir_refuses(image_root, tmp_path):
  workdir = tmp_path / "busy"
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from focus_jax import lock\n"
      f"with lock.WorkdirLock({str(workdir)!r}):\n"
      "  print('held', flush=True); time.sleep(60)\n",
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lock.WorkdirBusy, match=f"in use by pid {holder.pid} on .* since"):
      train.train_and_evaluate(_smoke("pretrain", image_root, 1), str(workdir))
    assert os.listdir(workdir) == [lock.LOCK_FILE]  # nothing else was created
  finally:
    holder.kill()
    holder.wait()
  # The holder died without releasing: its lock is stale and is taken over.
  with lock.WorkdirLock(str(workdir)):
    with open(workdir / lock.LOCK_FILE) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert not (workdir / lock.LOCK_FILE).exists()


def test_sigterm_saves_the_current_step_and_stops(image_root, tmp_path):
  workdir = str(tmp_path / "run")
  config = _smoke("pretrain", image_root, 50, checkpoint_every_steps=1000)
  metrics = os.path.join(workdir, "metrics.jsonl")

  def send_after_first_logged_step():
    for _ in range(3000):
      if os.path.exists(metrics) and '"step"' in open(metrics).read():
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.05)

  sender = threading.Thread(target=send_after_first_logged_step, daemon=True)
  sender.start()
  last = train.train_and_evaluate(config, workdir)
  sender.join()
  assert last["interrupted"] == "SIGTERM"
  stopped = last["step"]
  assert 1 <= stopped < 50
  assert checkpoint.latest_step(os.path.join(workdir, "checkpoints")) == stopped
  logged = [r["step"] for r in metric_writer.read_jsonl(metrics) if "step" in r]
  assert logged[-1] == stopped
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_init_from_is_checked_before_anything_is_created(image_root, tmp_path):
  workdir = tmp_path / "unet"
  missing = _smoke("unet_pretrain", image_root, 1, init_from=str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="init_from=.*missing: no such directory"):
    train.train_and_evaluate(missing, str(workdir))
  (tmp_path / "empty").mkdir()
  empty = _smoke("unet_pretrain", image_root, 1, init_from=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="no checkpoint in"):
    train.train_and_evaluate(empty, str(workdir))
  assert not workdir.exists()


def test_init_from_another_architecture_names_the_differences(image_root, smoke_chain, tmp_path):
  stage1 = os.path.join(smoke_chain[0], "pretrain")
  config = _smoke("unet_pretrain", image_root, 1, init_from=stage1)
  config.unet.base = 8  # the chain's stage 1 has the smoke UNet of base 4
  with pytest.raises(ValueError) as info:
    train.train_and_evaluate(config, str(tmp_path / "unet"))
  message = str(info.value)
  assert stage1 in message and "another architecture" in message
  assert "unet.params" in message and "stored (4," in message and "config.unet" in message


def test_bad_rows_policy_reaches_the_layout(image_root, tmp_path):
  import shutil

  root = tmp_path / "root"
  shutil.copytree(image_root, root)
  with open(root / "train_landmarks.csv", "a") as f:
    f.write("missing.png," + ",".join(["1.0"] * 136) + "\n")
  config = _smoke("pretrain", str(root), 1)
  config.data.source = "memory"
  with pytest.raises(ValueError, match="missing.png"):
    train.train_and_evaluate(config, str(tmp_path / "fail"))
  config.data.bad_rows = "skip"
  assert jax.numpy.isfinite(train.train_and_evaluate(config, str(tmp_path / "skip"))["loss"])


def test_corrupt_image_names_file_and_row(image_root, tmp_path):
  import shutil

  from focus_jax.data import examples, layout

  root = tmp_path / "root"
  shutil.copytree(image_root, root)
  records = layout.read_split(str(root), "train")
  victim = records[1]
  data = open(victim.image_path, "rb").read()
  with open(victim.image_path, "wb") as f:
    f.write(data[: len(data) // 3])  # truncated: the header still parses
  maker = examples.ExampleMaker(str(root), align=False)
  with pytest.raises(ValueError, match=rf"train_landmarks.csv, row {victim.row}: cannot decode"):
    maker(1, victim)


@pytest.mark.slow  # ~20 s; tfds reading itself is tested in test_data_tfds
def test_training_streams_a_prepared_tfds_source(image_root, tmp_path):
  config = _smoke("pretrain", image_root, 1)
  config.data.source = "tfds"
  config.data.tfds_dir = str(tmp_path / "tfds")
  assert jax.numpy.isfinite(train.train_and_evaluate(config, str(tmp_path / "run"))["loss"])
  prepared = os.listdir(tmp_path / "tfds" / "focus_faces")
  assert len(prepared) == 1 and prepared[0].startswith("root_")
  # A second run reuses the prepared dataset.
  config.total_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "run"))
  assert os.listdir(tmp_path / "tfds" / "focus_faces") == prepared


def _train_command(workdir, image_root, total_steps):
  return [
    sys.executable,
    "-m",
    "focus_jax.train",
    "--config=configs/pretrain.py:smoke",
    f"--workdir={workdir}",
    f"--config.data.image_root={image_root}",
    f"--config.total_steps={total_steps}",
    "--config.checkpoint_every_steps=1",
    "--config.log_every_steps=1",
    "--config.batch_size=8",
  ]


def _final_params(workdir, image_root, total_steps):
  config = _smoke("pretrain", image_root, total_steps)
  states = _checkpoint_states(workdir, config)
  return jax.device_get(states[max(states)])


@pytest.mark.slow  # several processes, each compiling the step (~2 min)
def test_kill_9_at_random_moments_then_resume_is_bit_exact(image_root, tmp_path):
  import numpy as np

  root = os.path.join(os.path.dirname(__file__), "..")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  subprocess.run(_train_command(straight, image_root, 8), cwd=root, env=env, check=True)
  rng = np.random.default_rng(0)
  for _ in range(3):
    proc = subprocess.Popen(_train_command(killed, image_root, 8), cwd=root, env=env)
    # Wait for a first checkpoint of this attempt, then kill at a random moment after it.
    for _ in range(2400):
      if proc.poll() is not None or checkpoint.latest_step(os.path.join(killed, "checkpoints")):
        break
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 2.0))
    proc.kill()
    proc.wait()
  subprocess.run(_train_command(killed, image_root, 8), cwd=root, env=env, check=True)
  chex.assert_trees_all_equal(
    _final_params(straight, image_root, 8), _final_params(killed, image_root, 8)
  )


@pytest.mark.slow  # a separate process compiling the step (~1 min)
def test_sigterm_to_the_command_saves_and_exits_cleanly(image_root, tmp_path):
  workdir = str(tmp_path / "run")
  root = os.path.join(os.path.dirname(__file__), "..")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.Popen(
    _train_command(workdir, image_root, 500) + ["--config.checkpoint_every_steps=1000"],
    cwd=root,
    env=env,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 600  # compilation alone takes minutes on a loaded machine
  while time.time() < deadline:
    if os.path.exists(metrics) and '"step"' in open(metrics).read():
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err
  assert "Run the same command to resume" in err and "Traceback" not in err
  assert 1 <= checkpoint.latest_step(os.path.join(workdir, "checkpoints")) < 500


@pytest.mark.slow  # two processes compiling the step (~2 min each case)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_one_process_of_two_stops_both_at_the_same_step(image_root, tmp_path, sig):
  """A preemption notice (or a Ctrl-C) reaches one host only: JAX's preemption service must carry
  it to the other, and both must save the same step (a save is collective: a host stopping
  alone hangs; before the fix this test timed out)."""
  workdir = str(tmp_path / "run")
  root = os.path.join(os.path.dirname(__file__), "..")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  address = f"localhost:{_free_port()}"
  procs = [
    subprocess.Popen(
      _train_command(workdir, image_root, 500)
      + [
        "--config.checkpoint_every_steps=1000",
        "--distributed",
        f"--coordinator={address}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=root,
      env=env,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 600
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.exists(metrics) and '"step"' in open(metrics).read():
      break
    time.sleep(0.05)
  procs[1].send_signal(sig)
  errs = [p.communicate(timeout=300)[1] for p in procs]
  assert [p.returncode for p in procs] == [143, 128 + sig], errs
  saved = checkpoint.latest_step(os.path.join(workdir, "checkpoints"))
  assert 1 <= saved < 500
  reasons = ["preemption", "SIGINT" if sig == signal.SIGINT else "preemption"]
  for err, reason in zip(errs, reasons, strict=True):
    assert f"Stopped by {reason} at step {saved};" in err and "Traceback" not in err, err


@pytest.mark.slow  # ~30 s of compilation
def test_validation_during_training_writes_scalars_and_a_grid(image_root, tmp_path):
  workdir = tmp_path / "run"
  config = _smoke("pretrain", image_root, 2, eval_every_steps=2, eval_split="all", eval_batches=1)
  train.train_and_evaluate(config, str(workdir))
  records = metric_writer.read_jsonl(str(workdir / "metrics.jsonl"))
  val = [r for r in records if "val/landmark_nme" in r]
  assert [r["step"] for r in val] == [2]
  for key in ("landmark_nme", "landmark_px", "unet_occluder_iou", "robust_occluder_iou"):
    assert 0.0 <= val[0][f"val/{key}"] < 1e4
  grid = workdir / "images" / "val_grid_00000002.png"
  import cv2

  image = cv2.imread(str(grid))
  size = config.data.image_size
  assert image.shape == (4 * size, 4 * size, 3)


def test_health_warnings_on_collapsed_masks_and_a_poor_fit(caplog):
  health = train._Health()
  with caplog.at_level("WARNING"):
    for step in (1, 2):
      health.check(step, {"visible_fraction": 0.995, "face_inlier_fraction": 0.1})
    assert not caplog.records  # not yet: a symptom must persist
    health.check(3, {"visible_fraction": 0.995, "face_inlier_fraction": 0.1})
  messages = [r.getMessage() for r in caplog.records]
  assert any("mask has collapsed" in m and "all-visible" in m for m in messages)
  assert any("reconstruction is not fitting" in m for m in messages)
  caplog.clear()
  with caplog.at_level("WARNING"):
    health.check(4, {"visible_fraction": 0.5, "face_inlier_fraction": 0.6})
    health.check(5, {"visible_fraction": 0.01})
  assert not caplog.records  # healthy again, and a new symptom starts counting afresh


def test_a_poor_fit_counts_only_after_the_grace_steps(caplog):
  health = train._Health(fit_grace_steps=50)
  with caplog.at_level("WARNING"):
    for step in (25, 50):
      health.check(step, {"face_inlier_fraction": 0.1})
    health.check(75, {"face_inlier_fraction": 0.1})
    health.check(100, {"face_inlier_fraction": 0.1})
    assert not caplog.records  # only steps 75 and 100 counted so far
    health.check(125, {"face_inlier_fraction": 0.1})
  assert [r.getMessage().startswith("step 125:") for r in caplog.records] == [True]
