"""DualTalk (NNX) vs the PyTorch module tree with the same weights; batching; parameter count."""

import math

import numpy as np
import pytest
import torch
from flax import nnx

from dualtalk_jax import audio, params as params_lib
from dualtalk_jax.config import CONFIGS
from dualtalk_jax.convert import pytorch
from dualtalk_jax.eval.predict import predict
from dualtalk_jax.models.dualtalk import abstract_model, count_params
from third_party.dualtalk_torch import DualTalk as TorchDualTalk
from conftest import perturbed_model

TINY = CONFIGS["tiny"]


def torch_twin(model, cfg=TINY):
  sd = pytorch.params_to_state_dict(params_lib.of(model), cfg)
  ref = TorchDualTalk.from_config(cfg)
  ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)
  return ref.eval()


def _clip(rng, samples, motion_frames):
  a = audio.normalize(rng.normal(size=samples).astype(np.float32))
  b = audio.normalize(rng.normal(size=samples).astype(np.float32))
  m = rng.normal(size=(motion_frames, 56)).astype(np.float32)
  return a, b, m


@pytest.fixture(scope="module")
def models():
  model = perturbed_model()
  return model, torch_twin(model)


@pytest.mark.parametrize("samples,motion_delta", [(4480, 0), (7001, 5), (16000 + 123, -3), (9600, 17)])
def test_matches_torch_tree(models, samples, motion_delta):
  model, ref = models
  t = audio.num_frames(samples)
  a, b, m = _clip(np.random.default_rng(samples), samples, t + motion_delta)
  got = np.asarray(predict(model, a[None], b[None], m[None]))
  with torch.no_grad():
    want = ref(torch.from_numpy(a[None]), torch.from_numpy(b[None]), torch.from_numpy(m[None])).numpy()
  assert got.shape == want.shape == (1, t, 56)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_output_frames_follow_float64_formula():
  assert audio.num_frames(4480) == 8 == math.ceil(4480 / 16000 * 25)
  assert audio.num_frames(4481) == 8 and audio.num_frames(640) == 1


def test_padded_batch_equals_clip_by_clip(models):
  model, _ = models
  rng = np.random.default_rng(7)
  lengths = [16000, 4480, 9000]
  motions = [25, 9, 20]
  clips = [_clip(rng, s, n) for s, n in zip(lengths, motions)]
  s_max, n_max = max(lengths), max(motions)
  a = np.zeros((3, s_max), np.float32)
  b = np.zeros((3, s_max), np.float32)
  m = np.zeros((3, n_max, 56), np.float32)
  for i, (ai, bi, mi) in enumerate(clips):
    a[i, : len(ai)], b[i, : len(bi)], m[i, : len(mi)] = ai, bi, mi
  frames = np.array([audio.num_frames(s) for s in lengths])
  got = np.asarray(
      predict(model, a, b, m, audio_self_lengths=np.array(lengths), audio_other_lengths=np.array(lengths),
            motion_other_lengths=np.array(motions), num_frames=frames)
  )
  for i, (ai, bi, mi) in enumerate(clips):
    alone = np.asarray(predict(model, ai[None], bi[None], mi[None]))[0]
    np.testing.assert_allclose(got[i, : frames[i]], alone, atol=1e-5, rtol=0)


def test_dropout_only_in_training_mode():
  model = perturbed_model()
  rng = np.random.default_rng(1)
  a, b, m = _clip(rng, 16000, 25)
  x = (a[None], b[None], m[None])
  call = nnx.jit(lambda model, *x: model(*x))
  np.testing.assert_array_equal(np.asarray(call(model, *x)), np.asarray(call(model, *x)))
  model.train()
  y1, y2 = np.asarray(call(model, *x)), np.asarray(call(model, *x))
  assert np.abs(y1 - y2).max() > 1e-3  # fresh dropout masks each call


def test_large_config_parameter_count():
  assert count_params(abstract_model(CONFIGS["large"])) == 647_237_048


@pytest.mark.slow
def test_large_matches_torch_tree_on_10s_of_audio():
  cfg = CONFIGS["large"]
  model = perturbed_model(cfg, scale=0.01)
  ref = torch_twin(model, cfg)
  a, b, m = _clip(np.random.default_rng(0), 160000, 250)
  got = np.asarray(predict(model, a[None], b[None], m[None]))
  with torch.no_grad():
    want = ref(torch.from_numpy(a[None]), torch.from_numpy(b[None]), torch.from_numpy(m[None])).numpy()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
