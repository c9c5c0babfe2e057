"""Hydra configs of the app, shipped as the package ``lightning_ard.conf`` (pyproject maps it to this folder), so
``initialize_config_module("lightning_ard.conf")`` and ``ard-train`` find them in a checkout and in a wheel."""
