"""The stage-1 DPA model (official model_for_pretrain.py) against its torch re-creation, and the stage 1 -> 2 transfer.

Tiny models as in test_dpa_models.py (whose fixtures and helpers this file uses): eval parity, train-mode maps
and gradients (the trained set is exactly the official parameters that get a gradient: all but PCG.out and
GAN.fc), and the transfer = the official load_my_state_dict rule on the torch models.
"""

import copy

import jax
import numpy as np
import torch

from gsa_jax.models.dpa import config as config_lib
from gsa_jax.models.dpa import network
from gsa_jax.models.dpa import weights as dpa_weights
import torch_dpa as T
from test_dpa_models import TINY, _check_gradients, _compare, _loss_and_grads, _train_close, compiled, torch_in
from test_dpa_models import inputs, released  # noqa: F401  (pytest fixtures, used by name)

torch.set_num_threads(1)


def test_stage1_parity_and_gradients(inputs):  # noqa: F811
  torch_model = T.randomize_(T.PretrainModel(dim=16, width=0.125), 2, squeeze_scale=10.0)
  variables, settings = dpa_weights.convert_checkpoint(T.numpy_state(torch_model))   # stage and widths inferred
  assert settings.kind == 'saliency' and settings.dim == 16 and settings.vgg_width == 0.125
  model = network.build_model(settings)
  x = torch_in(inputs['rgb'])
  torch_model.eval()
  with torch.no_grad():
    expected = torch_model(x)
  out = compiled(lambda v, a: model.apply(v, a, train=False), variables, inputs['rgb'])(variables, inputs['rgb'])
  _compare(out['side_probs'], expected, atol=2e-5)
  t32 = copy.deepcopy(torch_model).train(True)
  t64 = copy.deepcopy(torch_model).double().train(True)
  with torch.no_grad():
    out32, out64 = t32(x), t64(x.double())
  (_, (out, _)), (grads, _, _) = _loss_and_grads(model, variables, inputs, video=False)
  _train_close(out['side_probs'], out32, out64)
  dead = _check_gradients(grads, settings, torch_model, (x,), inputs['mask'])
  assert dead and all(('.out.' in n or '.GAN.fc.' in n) for n in dead)



def test_stage1_transfer_is_the_official_rule(released):  # noqa: F811
  torch_video, video_vars, settings = released
  torch_stage1 = T.randomize_(T.PretrainModel(dim=16, width=0.125), 4)
  stage1_vars, _ = dpa_weights.convert_checkpoint(T.numpy_state(torch_stage1))
  moved, report = dpa_weights.transfer_stage1(stage1_vars, video_vars)
  assert report['fresh'] == ['flow_ifa', 'fuse4', 'fuse5', 'fuse6', 'rgb_ifa']
  assert report['unused'] == ['rgb_ima4', 'rgb_ima5', 'rgb_sq4']
  assert 'flow_encoder <- rgb_encoder' in report['copied'] and 'decoder <- decoder' in report['copied']
  # The official load_my_state_dict on the torch models: each key, and its rgb_ -> flow_ twin.
  target = copy.deepcopy(torch_video)
  own = target.state_dict()
  for name, value in torch_stage1.state_dict().items():
    for key in (name, name.replace('rgb_', 'flow_')):
      if key in own:
        own[key].copy_(value)
  expected, _ = dpa_weights.convert_checkpoint(T.numpy_state(target), settings)
  jax.tree.map(np.testing.assert_array_equal, moved, expected)
  # With the DAM wired in, the stage-1 DAMs (graph network + fusion) and sq4 transfer to both streams.
  dam = dpa_weights._abstract(config_lib.Settings.from_config(dict(TINY, ima='official_dam')))
  dam = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), dam)
  moved, report = dpa_weights.transfer_stage1(stage1_vars, dam)
  assert {'flow_ima4 <- rgb_ima4', 'rgb_ima5 <- rgb_ima5', 'flow_sq4 <- rgb_sq4'} <= set(report['copied'])
  assert report['fresh'] == ['ccm4', 'ccm5', 'flow_fuse5', 'flow_ifa', 'fuse4', 'fuse5', 'fuse6', 'rgb_fuse5',
                             'rgb_ifa'] and report['unused'] == []
