"""Dropout sites: what a site is, how they are detected, and the in-place swap that serves them."""

from lightning_ard.sites.detect import Site, SiteReport, Skipped, Surgery, find_sites

__all__ = ["Site", "SiteReport", "Skipped", "Surgery", "find_sites"]
