"""How much of each class's sound a 16 kHz model never hears: the share of every recording's
energy above a cut-off (default 8 kHz, the Nyquist frequency of the model's 16 kHz input), read at
the file's own sample rate, summarised per class.

    python recipes/band_energy.py LISTING.csv [--split train] [--cutoff 8000] [--floor 100]
        [--report band_energy.json]

LISTING: a BEANS classification CSV (path,label; with --split, the rows of that `split` value).
Per recording: sum over frequencies f >= floor of |X(f)|^2, the share of it above the cut-off
(the recording's mean removed; the floor keeps rumble and DC from deciding); the audio is read in
one-second blocks, each transformed alone (Parseval: energies of blocks add up), so memory stays
flat on long files. A recording whose sample rate is at most 2 x cutoff has no content above
it: share 0. Per class: the median share and the number of recordings. Prints a table (classes
sorted by median share) and how many classes and recordings hold most of their energy above the
cut-off; --report writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from biomamba.data import read_beans_csv  # noqa: E402  (the repository's package, run as a script)


def energy_above(path: Path, cutoff_hz: float, floor_hz: float) -> float:
    """Share of the recording's energy (frequencies >= floor_hz) above cutoff_hz, in [0, 1]."""
    info = sf.info(str(path))
    if info.samplerate <= 2 * cutoff_hz:
        return 0.0
    mean = 0.0
    for block in sf.blocks(str(path), blocksize=info.samplerate, dtype="float64", always_2d=True):
        mean += block.mean(axis=1).sum()
    mean /= max(1, info.frames)
    above = total = 0.0
    for block in sf.blocks(str(path), blocksize=info.samplerate, dtype="float64", always_2d=True):
        x = block.mean(axis=1) - mean
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1.0 / info.samplerate)
        band = freqs >= floor_hz
        total += power[band].sum()
        above += power[band & (freqs > cutoff_hz)].sum()
    return float(above / total) if total > 0 else 0.0


def per_class(rows: list[tuple[Path, str]], cutoff_hz: float, floor_hz: float) -> dict[str, list[float]]:
    shares: dict[str, list[float]] = {}
    for path, label in rows:
        shares.setdefault(label, []).append(energy_above(path, cutoff_hz, floor_hz))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listing", type=Path)
    parser.add_argument("--split", default=None)
    parser.add_argument("--cutoff", type=float, default=8000.0)
    parser.add_argument("--floor", type=float, default=100.0)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    rows = read_beans_csv(args.listing, split=args.split)
    if not rows:
        sys.exit(f"{args.listing}: no rows" + (f" with split {args.split!r}" if args.split else ""))
    shares = per_class(rows, args.cutoff, args.floor)
    median = {label: float(np.median(v)) for label, v in shares.items()}
    every = np.concatenate([np.asarray(v) for v in shares.values()])
    print(f"share of energy above {args.cutoff:g} Hz (frequencies >= {args.floor:g} Hz), median per class:")
    for label in sorted(median, key=lambda k: -median[k]):
        print(f"  {label:40s} {median[label]:.2f}  ({len(shares[label])} recordings)")
    mostly = sum(m > 0.5 for m in median.values())
    print(f"classes whose median recording has most of its energy above {args.cutoff:g} Hz: "
          f"{mostly} of {len(median)}; recordings: {int((every > 0.5).sum())} of {len(every)}")
    if args.report:
        args.report.write_text(json.dumps({
            "listing": str(args.listing), "split": args.split, "cutoff_hz": args.cutoff, "floor_hz": args.floor,
            "classes": {k: {"median_share": median[k], "recordings": len(shares[k])} for k in median},
            "classes_mostly_above": mostly, "recordings_mostly_above": int((every > 0.5).sum()),
            "recordings": len(every)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
