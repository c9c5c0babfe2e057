"""The site table is a view of the plan: rows, LSTM group kinds, fall-backs, skipped dropouts, the plain model."""

from __future__ import annotations

from lightning_ard import ARDConfig
from lightning_ard.plan_table import plan_table
from lightning_ard.planning import build_plan
from tests.lm import TinyLM as LM


def _row(table: str, site: str) -> str:
    return next(line for line in table.splitlines() if line.split()[:1] == [site])


def test_lstm_rows_say_what_their_groups_cut() -> None:
    table = plan_table(build_plan(LM(), ARDConfig(lstm_groups=2)))
    assert "  2 time chunks  " in _row(table, "drop->lstm") and "  2 time chunks  " in _row(table, "lstm.l1")
    assert "  4  " in _row(table, "drop->dec")  # a Linear site's own groups
    sequence = plan_table(build_plan(LM(), ARDConfig(lstm_mode="sequence", lstm_groups=3)))
    assert sequence.count("3 sequence groups") == 3  # the decoder follows the LSTM's groups


def test_decisions_are_listed_with_their_reasons() -> None:
    plan = build_plan(LM(), ARDConfig(lstm_groups=2)).fall_back(["lstm.l1"], {"lstm.l1": "measured 0.80x"})
    table = plan_table(plan.with_backends({"dec": "gathered"}).give_up("the measured step is not faster (0.90x)"))
    assert "  plain model: the measured step is not faster (0.90x)" in table
    assert "  nn.Dropout lstm.l1: measured 0.80x" in table
    assert "  backends: dec gathered" in table
    skipped = plan_table(build_plan(LM(bidirectional=True), ARDConfig(p=0.7)))
    assert "  skipped drop->lstm: LSTM sites above p = 0.5 stay nn.Dropout under groups='auto'" in skipped
