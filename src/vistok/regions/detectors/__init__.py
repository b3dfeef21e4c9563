"""Region detectors: one module per backend, each registering itself with
:func:`vistok.regions.base.register_detector` when imported (the registry imports them all on first lookup)."""
