"""One module per VLM family (or hosted provider). Each registers its rule with
:func:`vistok.budget.core.register_family`; every module in this package is imported on first use."""
