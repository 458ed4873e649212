"""Tissue codes of the uint8 tissue map, and the masked writes that paint them."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Codes of the tissue map (uint8)."""

    AIR = 0
    FAT = 1  # subcutaneous fat
    MUSCLE = 2  # skin, chest wall, paraspinal muscles, airway wall, oesophagus
    MED_FAT = 3  # mediastinal / pericardial fat, the default inside the rib cage
    LUNG = 4
    LUNG_VESSEL = 5
    HEART = 6  # myocardium
    BLOOD = 7  # heart chambers and every large vessel
    AIRWAY = 8  # trachea and bronchi lumen
    CORTEX = 9  # cortical bone
    MARROW = 10  # cancellous bone
    DISC = 11
    CSF = 12
    LIVER = 13
    SOFT = 14  # spleen, stomach wall
    GAS = 15  # bowel / stomach gas
    TABLE = 16
    MASS = 17


VESSEL_TISSUES = (Tissue.HEART, Tissue.BLOOD)


def allowed(*codes: int) -> np.ndarray:
    """A 256-entry boolean table, True at ``codes``: ``table[tissue_map]`` says where a new
    structure may overwrite what is already painted."""
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    return table


def put(t: np.ndarray, mask: np.ndarray, code: int, only: np.ndarray | None = None) -> None:
    """Write ``code`` into the tissue block ``t`` where ``mask`` holds (and, with ``only`` from
    `allowed`, only over the tissues it allows). ``mask`` broadcasts against ``t``."""
    if only is not None:
        mask = mask & only[t]
    np.copyto(t, np.uint8(code), where=mask)
