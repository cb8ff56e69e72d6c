"""GSA-Net's config section (`config.model`): defaults, validation, and the network settings built from it.

The defaults reproduce the official GSANet code (Hydragon516/GSANet @ 9a8eb07). Every place where the code
and the paper's text disagree is a named switch; its comment gives both values.
"""

from typing import Any

import ml_collections

from gsa_jax.models.gsanet import losses

# Fields of the model section that are not network settings (network.ModelSettings takes the rest).
TRAINING_FIELDS = ('name', 'loss', 'aux_loss_weight', 'transfer_mffm_branches')


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = 'gsanet'
  # 'video': the two-stream GSANet; 'saliency': the stage-1 RGB-only model (no slots, no flow).
  m.kind = 'video'
  # Backbone: mit_b0..mit_b5 (SegFormer encoder; official: mit_b2), resnet18/34/50/101, tiny_cnn (tests).
  m.backbone = 'mit_b2'
  m.drop_path_rate = 0.1  # MiT stochastic depth (official 0.1).
  m.dim = 128  # working width C of MFFM outputs and the slot branch.
  m.num_slots = 2  # N_S: slot 0 = foreground, slot 1 = background (through supervision).
  # Local extractor (k-means on the 1/16 target feature).
  m.num_clusters = 64  # M.
  m.kmeans_iters = 10  # Lloyd iterations, fixed count under jit (official max_iter=10).
  m.kmeans_init = 'random'  # 'random' (official: rows drawn with replacement) | 'kmeans++' | 'strided'.
  m.kmeans_assign = 'hard'  # 'hard' (official, stop-gradient one-hot) | 'soft' (differentiable).
  m.kmeans_temperature = 1.0  # temperature of the soft assignment.
  m.prototype_reduce = 'sum'  # k-means prototypes: 'sum' of members (official) | 'mean' (paper, GWAP).
  m.slot_pool = 'sum'  # guided slots: softmax-weighted 'sum' (official) | 'mean' (paper eq. 2, GWAP).
  # Guided slot attention.
  m.slot_iters = 3  # T.
  m.knn_k = 16  # N nearest prototypes per slot.
  # KNN search pool: 'aggregated' (official: only the M FAT-aggregated prototypes, through the
  # prototype_filter overwrite bug) | 'aggregated_and_reference' (paper: aggregated + reference prototypes).
  m.knn_pool = 'aggregated'
  m.fat_dropout = 0.3  # dropout in the FAT's small transformer blocks (official 0.3).
  m.cosine_eps = 1e-8  # eps in cosine similarities (official: none; 0.0 reproduces it).
  # Table 2 ablation switches (all True = row (f), the full model).
  m.use_guided_slots = True  # False: learned randomly initialised slots (Slot Attention style).
  m.use_knn = True  # False: slots attend to all prototypes.
  m.use_slot_attention = True  # False: no slot refinement (and no slot branch at all if GS is off too).
  m.use_fat = True  # False: the standard transformer update of the original slot attention.
  m.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16' (params stay float32).
  # BatchNorm of the reference frames in training: 'per_reference' (official get_ref_feature: each
  # reference frame through the stream's encoder + mffm1 as its own batch, the running statistics updated
  # once per reference, in order) | 'joint' (a deviation: all b*t reference frames as one batch and one
  # update; fewer, larger calls, different gradients and running statistics). Same in evaluation.
  m.reference_batchnorm = 'per_reference'
  # Running-variance update of every BatchNorm: 'unbiased' (official, PyTorch: the batch variance x n/(n-1))
  # | 'biased' (flax.linen.BatchNorm: the batch variance as is). Normalisation is the same for both.
  m.batch_norm_running_var = 'unbiased'
  # The loss: 'official' (double sigmoid, unit weights, 10 maps) | 'f3net' (paper: weighted BCE+IoU on logits).
  m.loss = 'official'
  m.aux_loss_weight = 1.0  # weight of the 6 slot maps in the loss (official 1).
  # Stage 1 -> 2: True copies the MFFM branch weights too; False reproduces the official key mismatch that
  # drops them.
  m.transfer_mffm_branches = True
  return m


def network_fields(model: Any) -> dict[str, Any]:
  """The fields of the model section that network.ModelSettings takes."""
  fields = dict(model.to_dict() if hasattr(model, 'to_dict') else model)
  return {k: v for k, v in fields.items() if k not in TRAINING_FIELDS}


def check(model: Any) -> list[str]:
  """Problems of a GSA-Net model section, each naming the field and the fix; [] when valid."""
  from gsa_jax.models.gsanet import network  # pylint: disable=g-import-not-at-top
  problems = []
  try:
    network.ModelSettings.from_config(network_fields(model))
  except ValueError as e:
    problems.append(str(e))
  if model.loss not in losses.LOSS_VARIANTS:
    problems.append(f'model.loss={model.loss!r}; valid: {losses.LOSS_VARIANTS}')
  if not model.aux_loss_weight >= 0:
    problems.append(f'model.aux_loss_weight={model.aux_loss_weight}; must be >= 0')
  return problems
