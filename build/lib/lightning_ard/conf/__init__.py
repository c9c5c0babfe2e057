"""Hydra configs of the app (a package so that ``initialize_config_module("lightning_ard.conf")`` finds them)."""
