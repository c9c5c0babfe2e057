"""The site table: a plan printed for a person (what the callback shows at fit start and the examples at the end)."""

from __future__ import annotations

from collections.abc import Callable

from lightning_ard.plan import ARDPlan
from lightning_ard.sites import Site


def plan_table(plan: ARDPlan, expected_saving: Callable[[Site], float] | None = None) -> str:
    """One row per site (kind, width, rate (the pattern's, plus an LSTM site's element-wise rate), family, patterns
    per step and, at an LSTM's sites, what they cut, expected rate and, given ``expected_saving``, the expected share
    of its layers' FLOPs removed), then the sites that run as nn.Dropout and the dropouts left alone, each with the
    reason, and the backends a measurement chose."""
    header = ("site", "kind", "width", "p", "family", "groups", "E[rate]")
    if expected_saving is not None:
        header += ("E[FLOPs saved in its layers]",)
    rows = [header]
    for sp in plan.sites:
        site = sp.site
        groups = f"{sp.groups} (asked {sp.requested_groups})" if sp.requested_groups else str(sp.groups)
        if sp.tied and sp.groups > 1:  # an LSTM's groups: what they cut
            groups += " time chunks" if plan.config.get("lstm_mode") == "time" else " sequence groups"
        rate = f"{site.p:.3g}" + (f" + {sp.element_p:.3g} element-wise" if sp.element_p else "")
        row = (site.name, str(site.kind), str(site.width), rate, sp.family, groups)
        expected = 1.0 - (1.0 - sp.distribution.expected_rate) * (1.0 - sp.element_p)  # pattern and element-wise
        row += (f"{expected:.4f}",)
        if expected_saving is not None:
            row += (f"{expected_saving(site):.1%}",)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["ApproximateDropout sites:"]
    for i, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    if plan.plain is not None:
        lines.append(f"  plain model: {plan.plain}")
    lines += [f"  nn.Dropout {name}: {why}" for name, why in plan.fallen_back.items()]
    lines += [f"  skipped {name}: {reason}" for name, reason in plan.skipped]
    chosen = {path: name for path, name in plan.backends if name != "auto"}
    if chosen:
        lines.append("  backends: " + ", ".join(f"{path} {name}" for path, name in chosen.items()))
    return "\n".join(lines)
