"""Literature tissue-parameter ranges for brain tissue at 1.5 T and 3 T, and pathology.

Each entry is ``(low, high)``; a synthetic subject draws its tissue means inside these ranges (see
:func:`sample_tissue_means`). The ranges bracket the values reported in:

* [Wansapura99] Wansapura JP et al. NMR relaxation times in the human brain at 3.0 Tesla.
  JMRI 9:531 (1999): 3 T WM T1 832 ms, GM T1 1331 ms; WM T2 79.6 ms, GM T2 110 ms.
* [Stanisz05] Stanisz GJ et al. T1, T2 relaxation and magnetization transfer in tissue at 3T.
  MRM 54:507 (2005): 3 T WM T1 1084, T2 69; GM T1 1820, T2 99 ms. 1.5 T WM T1 884, T2 72;
  GM T1 1124, T2 95 ms.
* [Lu05] Lu H et al. Routine clinical brain MRI sequences for use at 3.0 Tesla. JMRI 22:13 (2005):
  CSF T1 ~4100-4200 ms at 3 T, ~4000 ms at 1.5 T; WM/GM T1 at 1.5 T ~650-790 / ~1100-1200 ms.
* [Gelman99] Gelman N et al. MR imaging of human brain at 3.0 T: preliminary report on transverse
  relaxation rates and relation to estimated iron content. Radiology 210:759 (1999): GM T2 ~85-100
  ms and WM T2 ~70-80 ms at 1.5 and 3 T.
* [Spijkerman18] Spijkerman JM et al. T2 mapping of cerebrospinal fluid: 3 T versus 7 T.
  MAGMA 31:415 (2018): CSF T2 ~1500-2000 ms at 3 T (longer at lower field).
* [Tofts03] Tofts P (ed.). Quantitative MRI of the Brain, ch. 4 (Wiley 2003): water content (PD)
  WM 0.69-0.71, GM 0.80-0.83, CSF ~1.0 (field independent).
* Pathology: [Bojorquez17] Bojorquez JZ et al. What are normal relaxation times of tissues at 3 T?
  MRI 35:69 (2017); [Blystad17] Blystad I et al. Quantitative MRI for analysis of peritumoral edema
  in malignant gliomas. PLoS One 12:e0177135 (2017) (oedema and tumour T1 ~1400-2500 ms, T2
  ~120-400 ms at 3 T); MS lesions T1 ~1.3-1.8x and T2 ~1.5-2.5x normal-appearing WM
  (Vrenken H et al., Radiology 240:811, 2006; West J et al., Neuroradiology 56:1085, 2014).

Times in ms, PD as a water fraction (CSF = 1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TISSUES", "FIELDS", "TISSUE_TABLE", "PATHOLOGY_TABLE", "GEOMETRIC_RANGES",
           "sample_tissue_means"]

TISSUES = ("CSF", "GM", "WM")
FIELDS = ("1.5T", "3T")

# field -> tissue -> parameter -> (low, high)
TISSUE_TABLE: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "3T": {
        # T1: Wansapura99 832 .. Stanisz05 1084; T2: Stanisz05 69 .. Wansapura99 79.6; PD: Tofts03.
        "WM": {"T1": (830.0, 1100.0), "T2": (69.0, 80.0), "PD": (0.66, 0.73)},
        # T1: Wansapura99 1331 .. Stanisz05 1820; T2: Gelman99 ~85 .. Wansapura99 110; PD: Tofts03.
        "GM": {"T1": (1300.0, 1850.0), "T2": (85.0, 110.0), "PD": (0.77, 0.84)},
        # T1: Lu05 ~4163; T2: Spijkerman18 1500-2000; PD: Tofts03.
        "CSF": {"T1": (3700.0, 4500.0), "T2": (1500.0, 2000.0), "PD": (0.95, 1.0)},
    },
    "1.5T": {
        # T1: Lu05 ~650 .. Stanisz05 884; T2: Stanisz05 72 .. Gelman99 ~80 (+ margin); PD: Tofts03.
        "WM": {"T1": (600.0, 890.0), "T2": (70.0, 85.0), "PD": (0.66, 0.73)},
        # T1: Stanisz05 1124 .. Lu05 ~1200 (with margin); T2: Stanisz05 95 .. ~110.
        "GM": {"T1": (950.0, 1250.0), "T2": (88.0, 110.0), "PD": (0.77, 0.84)},
        # T1: Lu05 ~4000; T2 longer than at 3 T (Spijkerman18 trend).
        "CSF": {"T1": (3500.0, 4500.0), "T2": (1600.0, 2200.0), "PD": (0.95, 1.0)},
    },
}

# Pathology relative to the subject's WM means (multipliers), or absolute at 3 T (ms) where noted.
# kind -> parameter -> (low, high) multiplier of the subject's WM value.
PATHOLOGY_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "ms_lesion": {"T1": (1.3, 1.8), "T2": (1.5, 2.5), "PD": (1.05, 1.20)},  # Vrenken06, West14
    "oedema": {"T1": (1.5, 2.1), "T2": (1.8, 3.0), "PD": (1.15, 1.30)},  # Blystad17
    "enhancing_rim": {"T1": (1.2, 1.6), "T2": (1.3, 1.8), "PD": (1.10, 1.20)},  # Blystad17
    "necrotic_core": {"T1": (2.0, 3.0), "T2": (3.0, 6.0), "PD": (1.25, 1.40)},  # Bojorquez17
}

# "Geometric" subjects: random ellipsoids spanning the range phantoms and pathology need.
GEOMETRIC_RANGES = {"T1": (10.0, 4000.0), "T2": (5.0, 2000.0), "PD": (0.3, 1.0)}


def sample_tissue_means(rng: np.random.Generator, field: str = "3T",
                        inner: float = 0.8) -> dict[str, dict[str, float]]:
    """Per-subject tissue means drawn uniformly from the central ``inner`` part of each range.

    Drawing from the central part leaves room for texture and partial volume, so the subject's
    pure-tissue medians stay inside the literature range.

    Args:
      rng: numpy random generator.
      field: ``"1.5T"`` or ``"3T"``.
      inner: fraction of each range to draw from (centred).

    Returns:
      ``{tissue: {"T1": ms, "T2": ms, "PD": fraction}}``.
    """
    if field not in TISSUE_TABLE:
        raise ValueError(f"field {field!r}: expected one of {sorted(TISSUE_TABLE)}")
    out = {}
    for tissue in TISSUES:
        out[tissue] = {}
        for param in ("T1", "T2", "PD"):
            lo, hi = TISSUE_TABLE[field][tissue][param]
            mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * inner
            out[tissue][param] = float(rng.uniform(mid - half, mid + half))
    return out
