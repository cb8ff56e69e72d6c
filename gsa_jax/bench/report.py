"""Reports of the benchmark: the markdown summary table and the sweep / breakdown plot."""

from typing import Any, Sequence

import numpy as np


def plot_sweeps(sweeps: dict[str, Any], results: Sequence[dict[str, Any]], path: str, title: str = '') -> None:
  """One PNG: ms/frame against each swept value, plus the time-vs-FLOP shares of the breakdown."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
  labels = dict(resolution='input size (px)', num_refs='N_R (reference frames)', batch='batch (cached context)')
  labels.update({k: k for k in (sweeps or {}) if k not in labels})
  for ax, key in zip(list(axes.flat)[:5], list(labels)[:5]):
    pts = (sweeps or {}).get(key) or []
    if pts:
      xs = [p['value'] for p in pts]
      ax.plot(xs, [p['cached_ms_per_frame'] for p in pts], 'o-', label='cached context (segment)')
      if 'full_ms_per_frame' in pts[0]:
        ax.plot(xs, [p['full_ms_per_frame'] for p in pts], 's--', label='full forward')
      ax.legend(fontsize=8)
    ax.set_xlabel(labels[key])
    ax.set_ylabel('ms / frame')
    ax.set_ylim(bottom=0)  # from zero, so that run-to-run noise does not look like a trend
    ax.grid(alpha=0.3)
  ax = axes.flat[5]
  bd = None
  for r in results:
    if r.get('breakdown'):
      bd = r['breakdown'][0]
      bd_name = f'{r["name"]} {r["size"]}px b{bd["batch"]}'
  if bd:
    names = [n for n, s in bd['segment_shares'].items() if 'within' not in s]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [bd['segment_shares'][n]['time_share'] for n in names], 0.4, label='time share')
    ax.bar(xs + 0.2, [bd['segment_shares'][n]['flop_share'] for n in names], 0.4, label='FLOP share')
    ax.set_xticks(xs, names, rotation=20, fontsize=8)
    ax.set_title(f'per-frame shares ({bd_name})', fontsize=9)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)



def _fmt(x: Any, spec: str) -> str:
  return '-' if x is None else spec.format(x)


def summary_table(report: dict[str, Any]) -> str:
  """A markdown table of the headline figures."""
  peak = report.get('matmul_peak', {}).get('f32', {}).get('flops_per_s', float('nan'))
  lines = [f'device: {report["env"]["device_kind"]} ({report["env"]["backend"]}), jax {report["env"]["versions"]["jax"]}; '
           f'f32 matmul peak {peak / 1e12:.3f} TFLOP/s',
           '| config | size | N_R | batch | cached fps | full fps | GFLOP/frame (cached / full) | % peak (cached) | compile s (cached / full) |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in report.get('results', []):
    for i in r['inference']:
      c, f = i['cached'], i.get('full')
      lines.append(f'| {r["name"]} | {r["size"]} | {r["num_refs"]} | {i["batch"]} | {c["frames_per_s"]:.2f} | '
                   f'{f["frames_per_s"] if f else float("nan"):.2f} | {c["flops_per_frame"] / 1e9:.1f} / '
                   f'{(f["flops_per_frame"] if f else 0) / 1e9:.1f} | {100 * c.get("fraction_of_matmul_peak", 0):.1f} | '
                   f'{c["compile_s"]:.1f} / {(f["compile_s"] if f else 0):.1f} |')
  lines += ['', '| config | size | train batch | s/step | examples/s | GFLOP/example | % peak | compile s |',
            '|---|---|---|---|---|---|---|---|']
  for r in report.get('results', []):
    t = r.get('train')
    if t:
      lines.append(f'| {r["name"]} | {r["size"]} | {t["batch"]} | {t["step_s"]:.3f} | {t["examples_per_s"]:.2f} | '
                   f'{t["flops_per_example"] / 1e9:.1f} | {100 * t.get("fraction_of_matmul_peak", 0):.1f} | '
                   f'{t["compile_s"]:.1f} |')
  for r in report.get('results', []):
    for bd in r.get('breakdown', []):
      lines += ['', f'breakdown {r["name"]} {r["size"]}px batch {bd["batch"]} (segment {bd["segment"]["ms"]:.1f} ms, '
                f'full {bd["full"]["ms"]:.1f} ms)', '| part | ms/call | x | time share | FLOP share |', '|---|---|---|---|---|']
      for n, s in bd['segment_shares'].items():
        q = bd['parts'].get(n, {})
        ms = q.get('ms', s['ms'])
        lines.append(f'| {n}{" (in slot_branch)" if "within" in s else ""} | {_fmt(ms, "{:.2f}")} | '
                     f'{q.get("count_per_call", 1):g} | {_fmt(s["time_share"], "{:.1%}")} | {s["flop_share"]:.1%} |')
  return '\n'.join(lines)


