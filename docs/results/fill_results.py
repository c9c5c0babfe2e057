"""Put the measured tables into docs/results.md: each `<!-- RESULTS:name -->` marker is followed by the file
docs/results/<file> it names (regenerated whenever the commands above each marker are run again).

    python docs/results/fill_results.py
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
PAGE = HERE.parent / "results.md"
SOURCES = {
    "speed-cpu": "bench_cpu.md",
    "speed-cpu-fit": "fit_bench_cpu.md",
    "accuracy-mlp": "accuracy_mlp_summary.md",
    "accuracy-lstm": "accuracy_lstm_summary.md",
}


def main() -> None:
    text = PAGE.read_text()
    for name, source in SOURCES.items():
        path = HERE / source
        if not path.exists():
            continue
        block = f"<!-- RESULTS:{name} -->\n{path.read_text().strip()}\n<!-- /RESULTS:{name} -->"
        pattern = re.compile(rf"<!-- RESULTS:{name} -->(?:.*?<!-- /RESULTS:{name} -->)?", re.S)
        text = pattern.sub(lambda _m, block=block: block, text, count=1)
    PAGE.write_text(text)


if __name__ == "__main__":
    main()
