"""One home for configuration: named presets of published settings (:mod:`.presets`) and the
directories swudi_lab reads and writes (:mod:`.paths`, from ``SWUDI_LAB_DATA``, ``SWUDI_LAB_CACHE``,
``SWUDI_LAB_RESULTS``, ``SWUDI_LAB_DOWNLOADS`` or the defaults).

Pure data and the environment, at the bottom of the import layers: every other part of swudi_lab may read it.
"""

from . import paths
from .presets import PAPER, PRESETS, SWUDI_PLUS, ZOO_MATCHED, Preset, get_preset, register_preset

__all__ = ["Preset", "PRESETS", "PAPER", "SWUDI_PLUS", "ZOO_MATCHED", "get_preset", "register_preset", "paths"]
