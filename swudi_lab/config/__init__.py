"""One home for configuration: named presets of published settings (:mod:`.presets`).

Pure data, at the bottom of the import layers: every other part of swudi_lab may read it.
"""

from .presets import PAPER, PRESETS, SWUDI_PLUS, ZOO_MATCHED, Preset, get_preset, register_preset

__all__ = ["Preset", "PRESETS", "PAPER", "SWUDI_PLUS", "ZOO_MATCHED", "get_preset", "register_preset"]
