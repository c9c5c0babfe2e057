"""Dropout sites: what a site is (``site``), how they are detected (``detect``), and the in-place swap (``swap``)."""

from lightning_ard.sites.detect import find_sites
from lightning_ard.sites.site import Site, SiteKind, SiteReport, Skipped
from lightning_ard.sites.swap import Surgery

__all__ = ["Site", "SiteKind", "SiteReport", "Skipped", "Surgery", "find_sites"]
