"""Diagnostic for the DDPM's short-T1 bias on the real phantom: the voxelwise IR fit of
NIST set A with the inversion efficiency bounded at 1.5 (default) or 1.0 (as in the DDPM's
training data), with clipped (12-bit saturated) samples excluded or included.

  PYTHONPATH=. python experiments/gpu/phantom_k_check.py
"""
import dataclasses
import pathlib

import numpy as np

from experiments import nist_phantom as n
from qmri_jax.evaluation import roi_medians
from qmri_jax.fitting import SolverOptions, fit_images
from qmri_jax.fitting.models import get_model

data = pathlib.Path("../shared/nist_phantom/A")  # run from the repository root
ref = n.load_reference(data, None)
vir = n.read_dicom_series(n.series_dirs(data, "vir"), kind="ir", name="vir")
lab = np.load(data / "rois.npz")["t1_labels"].T
img, valid = vir.images[:, :, 0], vir.valid[:, :, 0]
mask = lab > 0
base = get_model("ir")
rows = {}
for kmax in (1.5, 1.0):
    m = dataclasses.replace(base, upper=(base.upper[0], base.upper[1], kmax))
    for excl in (True, False):
        r = fit_images(img, vir.protocol, m, mask=mask, valid=valid if excl else None,
                       options=SolverOptions(loss="rician", max_iter=30))
        est = roi_medians(r.maps["T1"], lab, keep=r.converged)
        kk = roi_medians(r.maps["k"], lab, keep=r.converged)
        rows[(kmax, excl)] = [(100 * (est[i] / ref[("T1", i)]["T1"] - 1), kk[i]) for i in range(1, 11)]
for key, v in rows.items():
    print(f"k<={key[0]} clipped {'excluded' if key[1] else 'included'}: " + " ".join(f"{b:+6.1f}" for b, _ in v))
    print("   k: " + " ".join(f"{k:6.3f}" for _, k in v))
