"""DINO / DINOv2 ViT forward: ours (gsa_jax.backbones.vit, jit) against Hugging Face transformers' PyTorch
models with the same random weights, at the input sizes of the two models that use them.

  python -m gsa_jax.bench --vit --out=vit_bench.json [--repeats=3] [--warmup=1]

Cases (VIT_CASES): DINOv2 ViT-B/14 at 336x504 (SOLV's input) on `transformers.Dinov2Model`, DINO ViT-S/8 at
320x480 (Betrayed-by-Attention's input) on `transformers.ViTModel` (the DINO v1 layout: no LayerScale, LN eps
1e-6). The transformers model is built with random weights (config of the official variant, its native
grid), and its state dict is converted by `gsa_jax.backbones.vit_weights.convert_vit`, so both sides compute
with the same numbers. Timed: one batch-1 forward to the last block's tokens, float32 on both sides (ours
also in bfloat16 compute), median of `repeats` samples taken interleaved (ours f32, ours bf16, transformers, again ...) after `warmup`
calls of each, so that the drifting load of a shared machine falls on all three alike; ours compiled once beforehand (compile
time reported apart), the position embedding resized inside the program as for an unseen size. The outputs
are compared too (max |difference| of the last block's patch tokens): transformers resizes the position
embedding its own way (`size=` bicubic, which the official code does not use), so a difference of the order
of the embedding's resize error is expected, not a bug.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax.backbones import vit as vit_lib
from gsa_jax.backbones import vit_weights
from gsa_jax.bench import timing

# (variant, transformers family, input height, width).
VIT_CASES = (('dinov2_vitb14', 'dinov2', 336, 504), ('dino_vits8', 'vit', 320, 480))


def _transformers_model(variant: str, family: str, seed: int) -> Any:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  cfg = vit_lib.get_config(variant)
  common = dict(hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                patch_size=cfg.patch_size, image_size=cfg.pos_grid * cfg.patch_size,
                layer_norm_eps=vit_lib.LAYER_NORM_EPS, hidden_act='gelu', attn_implementation='eager')
  torch.manual_seed(seed)
  if family == 'dinov2':
    model = transformers.Dinov2Model(transformers.Dinov2Config(**common, qkv_bias=True, layerscale_value=1.0))
  else:
    model = transformers.ViTModel(transformers.ViTConfig(**common, intermediate_size=4 * cfg.width, qkv_bias=True),
                                  add_pooling_layer=False)
  with torch.no_grad():  # transformers' own init, with the CLS, register and position embeddings random too
    for name, p in model.named_parameters():
      if 'token' in name or 'position' in name:
        p.normal_(0.0, 0.02)
  return model.eval()


def _state(model: Any) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def bench_case(variant: str, family: str, height: int, width: int, *, repeats: int = 3, warmup: int = 1,
               seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Times one case (module docstring); returns its figures."""
  import torch  # pylint: disable=g-import-not-at-top
  model = _transformers_model(variant, family, seed)
  name, variables = vit_weights.convert_vit(_state(model), variant)
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((1, height, width, 3)).astype(np.float32)
  result: dict[str, Any] = dict(variant=name, transformers_model=type(model).__name__, height=height, width=width,
                                tokens=(height // vit_lib.get_config(variant).patch_size) *
                                (width // vit_lib.get_config(variant).patch_size) + 1,
                                params=int(sum(np.size(x) for x in jax.tree.leaves(variables))),
                                torch_threads=torch.get_num_threads())
  pixels = torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).copy())
  kwargs = {'interpolate_pos_encoding': True} if family == 'vit' else {}

  def torch_forward():
    with torch.inference_mode():
      return model(pixel_values=pixels, output_hidden_states=True, **kwargs).hidden_states[-1]

  programs = {}
  for key, dtype in (('ours_f32', jnp.float32), ('ours_bf16', jnp.bfloat16)):
    module = vit_lib.build_vit(variant, dtype=dtype)
    fn = lambda v, x, m=module: m.apply(v, x)['patch_tokens']
    start = time.perf_counter()
    programs[key] = jax.jit(fn).lower(variables, images).compile()
    result[key] = dict(compile_s=time.perf_counter() - start)
  result['flops'] = timing.cost(programs['ours_f32']).get('flops')
  calls = {'ours_f32': lambda: timing.block(programs['ours_f32'](variables, images)),
           'ours_bf16': lambda: timing.block(programs['ours_bf16'](variables, images)),
           'transformers_f32': torch_forward}
  for fn in calls.values():
    for _ in range(max(warmup, 1)):
      fn()
  # Samples interleaved (ours f32, ours bf16, transformers, ours f32, ...): on a shared machine the load
  # drifts, and interleaving spreads it evenly over the three.
  samples: dict[str, list[float]] = {k: [] for k in calls}
  for _ in range(max(repeats, 1)):
    for key, fn in calls.items():
      start = time.perf_counter()
      fn()
      samples[key].append(time.perf_counter() - start)
  for key, values in samples.items():
    result.setdefault(key, {}).update(median_s=float(np.median(values)), min_s=float(np.min(values)),
                                      samples_s=values)
    log(f'{name} {height}x{width} {key}: {result[key]["median_s"]:.3f} s')
  ours_out = np.asarray(programs['ours_f32'](variables, images))
  ref = torch_forward()
  prefix = 1 + vit_lib.get_config(variant).num_register_tokens
  result['max_abs_diff_patch_tokens'] = float(np.max(np.abs(ref[:, prefix:].numpy() - ours_out)))
  result['speedup_ours_f32_vs_transformers'] = result['transformers_f32']['median_s'] / result['ours_f32']['median_s']
  return result


def run(*, repeats: int = 3, warmup: int = 1, cases=VIT_CASES, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Every case in one run, with the environment (device, load average) recorded."""
  report = dict(env=timing.environment(), vit=[])
  for variant, family, h, w in cases:
    report['vit'].append(bench_case(variant, family, h, w, repeats=repeats, warmup=warmup, log=log))
  report['env']['load_average_end'] = list(os.getloadavg())
  return report


def table(report: dict[str, Any]) -> str:
  lines = [f'{"variant":<16} {"input":>9} {"tokens":>6} {"ours f32 s":>10} {"ours bf16 s":>11} '
           f'{"transformers s":>14} {"speedup":>7} {"max|diff|":>9}']
  for r in report['vit']:
    lines.append(f'{r["variant"]:<16} {r["height"]:>4}x{r["width"]:<4} {r["tokens"]:>6} '
                 f'{r["ours_f32"]["median_s"]:>10.3f} {r["ours_bf16"]["median_s"]:>11.3f} '
                 f'{r["transformers_f32"]["median_s"]:>14.3f} {r["speedup_ours_f32_vs_transformers"]:>7.2f} '
                 f'{r["max_abs_diff_patch_tokens"]:>9.2e}')
  return '\n'.join(lines)
