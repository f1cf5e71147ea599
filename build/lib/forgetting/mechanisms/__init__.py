"""Mechanisms of forgetting, one module each.

- :mod:`forgetting.mechanisms.drift`: representational drift, linear CKA (biased and debiased, full-batch
  and minibatch) between hidden states of two snapshots, layer by layer.
- :mod:`forgetting.mechanisms.landscape`: loss-landscape geometry: Hessian-vector products, extreme
  Hessian eigenvalues by Lanczos, Hessian trace by Hutch++, 1-D/2-D loss surfaces between snapshots and
  the second-order prediction of a loss change.
- :mod:`forgetting.mechanisms.gradients`: gradient alignment and conflict per matrix and per head.
- :mod:`forgetting.mechanisms.heads`: per-head disruption.

Submodules are imported explicitly (``from forgetting.mechanisms.drift import linear_cka``); importing this
package imports nothing heavy.
"""
