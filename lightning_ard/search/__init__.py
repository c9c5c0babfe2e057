"""Pattern-distribution search: a distribution over patterns whose drop rate is p and whose per-step kept count is
close to standard dropout's Binomial(N, 1 - p) (docs/method.md, "The distribution search").

``search_distribution(p, width, family, method)`` is the entry point; ``method="sgd"`` is the paper's search,
``method="exact"`` the linear-program cross-check.
"""

from lightning_ard.search.api import METHODS, clear_search_cache, search_distribution
from lightning_ard.search.candidates import FAMILIES
from lightning_ard.search.settings import SearchSettings

__all__ = ["FAMILIES", "METHODS", "SearchSettings", "clear_search_cache", "search_distribution"]
