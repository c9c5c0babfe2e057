"""Dropout sites: what a site is (``site``), how they are detected (``detect``, on the ``torch.fx`` helpers of
``trace``), site rules for blocks that do not trace (``rules``), the Linear sites that read an LSTM's output
(``followers``), and the in-place swap (``swap``)."""

from lightning_ard.sites.detect import find_sites
from lightning_ard.sites.followers import find_lstm_followers
from lightning_ard.sites.rules import BlockProof, BlockUse, SiteRule, register_site_rule, unregister_site_rule
from lightning_ard.sites.site import Site, SiteKind, SiteReport, Skipped
from lightning_ard.sites.swap import Surgery

__all__ = [
    "BlockProof",
    "BlockUse",
    "Site",
    "SiteKind",
    "SiteReport",
    "SiteRule",
    "Skipped",
    "Surgery",
    "find_lstm_followers",
    "find_sites",
    "register_site_rule",
    "unregister_site_rule",
]
