"""What every results collector in recipes/ shares: reading a work folder's times.tsv and JSON
reports, its command line (WORK, --out, --name), and writing results/NAME.{json,md}.

The collectors import it as a sibling module (`python recipes/collect_x.py` puts recipes/ first on
sys.path)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def read_times(work: Path) -> dict[str, int]:
    """WORK/times.tsv (recipes/timed.sh: NAME<TAB>wall seconds a line) -> {NAME: seconds}; {} if absent."""
    path = work / "times.tsv"
    lines = path.read_text().splitlines() if path.is_file() else []
    return {name: int(s) for name, s in (line.split("\t") for line in lines if line.strip())}


def read_json(path: Path, required: bool = False) -> dict | None:
    """A JSON report; None when it is absent (``required``: stop naming the file and the reason)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise SystemExit(f"{path}: no such report") from None
        return None
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: {e}") from None


def collector_arguments(description: str, default_name: str) -> argparse.ArgumentParser:
    """The collectors' command line: WORK, --out (default recipes/results), --name (the file stem)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("work", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=default_name, help="file stem of the written .json and .md")
    return parser


def write_results(out: Path, name: str, result: dict, markdown: str) -> None:
    """out/name.json (the result) and out/name.md (its table), and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
