"""A time-expanded copy of a BEANS classification listing: every recording resampled to 16000 x F Hz
and written as a 16 kHz file (F times slower, F times lower in pitch), so that a 16 kHz model hears
what lay up to 8 x F kHz. Bat detectors call this time expansion; here it is an experiment that
measures what the 16 kHz input costs on high-pitched species (recipes/README.md, InsectSet32).

    python recipes/time_expand.py LISTING.csv OUT_DIR [--factor 2]

Writes OUT_DIR/<each row's path> (FLAC, 16-bit, mono: the channels averaged) and OUT_DIR/<the
listing's name> with the same rows, so `bmamba train OUT_DIR/files.csv --split train` runs on
it unchanged. Durations in the copy are F times the real ones (a 5 s --crop is 5 / F s of the
real recording). Existing outputs are kept (a rerun finishes an interrupted copy).

Superseded for training: `bmamba train --sample-rate 16000xF` reads the original recordings at
that rate, the same samples (up to this copy's 16-bit rounding), and makes a model that `bmamba
detect` feeds and times correctly; a model trained on this copy would need time-expanded input
and its times divided by F. Kept as the record of how `results/insectset32_time_expanded.*` were made.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

MODEL_RATE = 16000


def expand(src: Path, dst: Path, factor: int) -> float:
    """Writes src time-expanded by factor to dst (16 kHz FLAC); returns the peak level before the
    16-bit conversion (a level above 1 would clip)."""
    audio, rate = sf.read(str(src), dtype="float32", always_2d=True)
    slowed = soxr.resample(audio.mean(axis=1), rate, MODEL_RATE * factor, quality="HQ")
    dst.parent.mkdir(parents=True, exist_ok=True)
    temp = dst.with_name(dst.name + ".partial")
    sf.write(str(temp), slowed, MODEL_RATE, subtype="PCM_16", format="FLAC")
    temp.replace(dst)   # a killed copy never leaves a truncated file under the final name
    return float(np.abs(slowed).max()) if len(slowed) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listing", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--factor", type=int, default=2)
    args = parser.parse_args()
    if args.factor < 1:
        sys.exit("--factor must be a whole number >= 1")
    with open(args.listing, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    if not fields or "path" not in fields:
        sys.exit(f"{args.listing}: no `path` column")
    root, missing, clipped = args.listing.parent, 0, 0
    for row in rows:
        src, dst = root / row["path"], args.out / row["path"]
        if not src.is_file():
            missing += 1
            continue
        if not dst.exists() and expand(src, dst, args.factor) > 1.0:
            clipped += 1
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / args.listing.name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows) - missing} recordings time-expanded x{args.factor} into {args.out}"
          + (f"; {missing} listed but absent" if missing else "")
          + (f"; {clipped} clipped at 16 bits" if clipped else ""))


if __name__ == "__main__":
    main()
