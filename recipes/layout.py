"""Data layouts for the recipes, built from ../shared/data/real into a work folder outside the repo.

No audio is copied: the listings (BEANS CSV / JSONL) point at the original files by absolute
path. Subcommands:

- ``folds``: the 5-fold split of the 100 phoebe clips by recording, stratified by species
  (2 recordings per species per fold), drawn with ``--seed``; written to ``recipes/phoebe_folds.csv``
  (committed, so every run uses the same split).
- ``cv WORK``: ``WORK/fold{k}/train.csv`` (the other four folds) and ``WORK/fold{k}/test.csv``
  (fold k) as BEANS classification listings (``path,label``).
- ``pretrain WORK``: ``WORK/pretrain_audio.txt``, the recordings used for self-supervised
  pre-training (one path a line): real recordings that hold no phoebe clip, so no test fold of any
  split is in them (see PRETRAIN_SOURCES).
- ``detect WORK --test-fold K``: detection listings (BEANS JSONL) for the default model; see
  `detect_listings`.
- ``attribution LISTING``: the recordist and licence of every phoebe clip in a listing (markdown).

Usage: ``python recipes/layout.py {folds,cv,pretrain,detect,attribution} ...`` (``--help`` per subcommand).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FOLDS_CSV = REPO / "recipes" / "phoebe_folds.csv"
N_FOLDS = 5
SOUNDSCAPE_TEST = 12     # maad soundscape clips held out from every stage of the default model
# Phoebe clips left out of the default model: 132865 is CC BY-SA 3.0, whose ShareAlike terms do not
# allow an adaptation under a NonCommercial licence, and the model is CC BY-NC-SA (the other 99).
DEFAULT_MODEL_EXCLUDE = {"132865"}

# Pre-training audio (relative to the data root): BSD-3 soundscapes and MIT field-recorder files.
# Left out: the phoebe clips (they are the fine-tuning test folds), the GWWA_XC xeno-canto files
# (CC BY-NC-ND: no derivatives) and oss's deliberately broken files (empty, stereo test stubs,
# 10 s of MP3 silence, a 0.4 s stub).
# Default model: field-recorder files from other sites used as negatives (no events) and as
# backgrounds mixed into the phoebe clips, so that "not the maad recorder" is not a shortcut to a
# species. Their content is unannotated: a Junco or a warbler singing in one of them would be a
# wrong negative (a risk taken knowingly). Held out from training to test false alarms instead:
# spinetail.wav, great_plains_toad.wav, rugr_drum.wav and the GWWA xeno-canto recordings (a
# warbler that is none of the 10 species; used only to evaluate, which their no-derivatives
# licence allows).
OTHER_SITE_NEGATIVES = (
    "oss/tests/audio/1min.wav",
    "oss/tests/audio/metadata.wav",
    "oss/tests/audio/audiomoth_gps.wav",
    *(f"oss/tests/audio/aru_{i}.wav" for i in range(1, 6)),
    *(f"oss/tests/audio/LOCA_2021_09_24_652_{i}.wav" for i in range(3, 9)),
)
OTHER_SITE_TESTS = (
    "maad/data/spinetail.wav",
    "oss/tests/audio/great_plains_toad.wav",
    "oss/tests/audio/rugr_drum.wav",
    "oss/docs/tutorials/resources/GWWA_XC/13738.mp3",
    "oss/docs/tutorials/resources/GWWA_XC/135601.mp3",
    "oss/docs/tutorials/resources/GWWA_XC/13742.mp3",
)

PRETRAIN_SOURCES = (
    "maad/data/indices",               # 96 x 10 s tropical-forest soundscape, BSD-3
    "maad/data/spinetail.wav",          # 19.5 s, BSD-3
    "oss/tests/audio/1min.wav",         # MIT (this and below)
    "oss/tests/audio/great_plains_toad.wav",
    "oss/tests/audio/rugr_drum.wav",
    "oss/tests/audio/metadata.wav",
    "oss/tests/audio/audiomoth_gps.wav",
    *(f"oss/tests/audio/aru_{i}.wav" for i in range(1, 6)),
    *(f"oss/tests/audio/LOCA_2021_09_24_652_{i}.wav" for i in range(3, 9)),
)


def data_root(arg: str | None) -> Path:
    """--data, else $BMAMBA_REAL_DATA, else ../shared/data/real next to the repository."""
    root = Path(arg or os.environ.get("BMAMBA_REAL_DATA") or REPO.parent / "shared" / "data" / "real")
    if not (root / "phoebe").is_dir():
        raise SystemExit(f"{root}: no phoebe/ folder (pass --data or set BMAMBA_REAL_DATA)")
    return root.resolve()


def phoebe_clips(root: Path) -> list[tuple[str, str]]:
    """(clip id, scientific name) of every processed phoebe clip, sorted by id."""
    data = root / "phoebe" / "audio" / "data"
    names = {row["id"]: row["scientific_name"] for row in csv.DictReader(open(data / "analysis.csv"))}
    ids = sorted(p.stem for p in (data / "processed").glob("*.mp3"))
    missing = [i for i in ids if i not in names]
    if missing:
        raise SystemExit(f"{data / 'analysis.csv'}: no label for clips {missing[:5]}")
    return [(i, names[i]) for i in ids]


def clip_path(root: Path, clip: str) -> Path:
    return root / "phoebe" / "audio" / "data" / "processed" / f"{clip}.mp3"


def make_folds(clips: list[tuple[str, str]], seed: int) -> dict[str, int]:
    """clip id -> fold 1..5: per species, the clips in a seeded random order dealt round-robin."""
    rng = np.random.default_rng(seed)
    by_species = defaultdict(list)
    for clip, species in clips:
        by_species[species].append(clip)
    folds = {}
    for species in sorted(by_species):
        members = sorted(by_species[species])
        for j, k in enumerate(rng.permutation(len(members))):
            folds[members[k]] = j % N_FOLDS + 1
    return folds


def read_folds() -> list[tuple[str, str, int]]:
    """(clip id, species, fold) from recipes/phoebe_folds.csv."""
    if not FOLDS_CSV.is_file():
        raise SystemExit(f"{FOLDS_CSV}: missing; run `python recipes/layout.py folds` first")
    return [(r["id"], r["species"], int(r["fold"])) for r in csv.DictReader(open(FOLDS_CSV))]


def write_csv(path: Path, rows: list[tuple[Path, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((str(p), label) for p, label in rows)


def cmd_folds(args) -> None:
    clips = phoebe_clips(data_root(args.data))
    folds = make_folds(clips, args.seed)
    with open(FOLDS_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "species", "fold"])
        w.writerows((clip, species, folds[clip]) for clip, species in clips)
    print(f"wrote {FOLDS_CSV} ({len(clips)} clips, seed {args.seed})")


def cmd_cv(args) -> None:
    root, work = data_root(args.data), Path(args.work)
    rows = read_folds()
    for k in range(1, N_FOLDS + 1):
        write_csv(work / f"fold{k}" / "train.csv", [(clip_path(root, c), s) for c, s, f in rows if f != k])
        write_csv(work / f"fold{k}" / "test.csv", [(clip_path(root, c), s) for c, s, f in rows if f == k])
    print(f"wrote {work}/fold1..{N_FOLDS}/{{train,test}}.csv")


def pretrain_files(root: Path) -> list[Path]:
    """PRETRAIN_SOURCES less the soundscape clips that the default model is tested on, so that
    its false-positive test runs on audio no stage of its training heard."""
    held = set(held_out_soundscape(root, SOUNDSCAPE_TEST))
    files = []
    for source in PRETRAIN_SOURCES:
        p = root / source
        if not p.exists():
            raise SystemExit(f"{p}: missing")
        files += sorted(p.glob("*.wav")) if p.is_dir() else [p]
    return [f for f in files if f not in held]


def cmd_pretrain(args) -> None:
    root, work = data_root(args.data), Path(args.work)
    files = pretrain_files(root)
    work.mkdir(parents=True, exist_ok=True)
    (work / "pretrain_audio.txt").write_text("".join(f"{f}\n" for f in files))
    print(f"wrote {work / 'pretrain_audio.txt'} ({len(files)} recordings)")


# --------------------------------------------------------------------------- detection


def soundscape_clips(root: Path) -> list[Path]:
    return sorted((root / "maad" / "data" / "indices").glob("*.wav"))


def held_out_soundscape(root: Path, n: int) -> list[Path]:
    """n soundscape clips spread evenly over the 24 h (every (96 // n)-th, from the middle of the
    first step), so night, dawn and day are all in the test."""
    clips = soundscape_clips(root)
    if n <= 0:
        return []
    step = max(1, len(clips) // n)
    return [c for i, c in enumerate(clips) if i % step == step // 2][:n]


def detect_listings(root: Path, test_fold: int | None, n_soundscape_test: int) -> dict[str, list[dict]]:
    """BEANS detection rows for the default model.

    Positives: every phoebe clip but DEFAULT_MODEL_EXCLUDE, one event over the whole clip labelled with its species (the
    clips were cut to the species' presence window, so these are weak labels: the bird does not
    sing in every 20 ms frame). Negatives: the 10 s maad soundscape clips (a tropical forest where
    none of the 10 North-American species occurs) and OTHER_SITE_NEGATIVES, no events; the same
    recordings are the training backgrounds (``backgrounds``, one path per row). Held out for
    testing: the phoebe clips of ``test_fold`` (none when None), the soundscape clips of
    `held_out_soundscape`, and OTHER_SITE_TESTS (``test_other``: no events).
    """
    from biomamba.audio import audio_info

    rows = read_folds()
    held_soundscape = set(held_out_soundscape(root, n_soundscape_test))
    out = {"train": [], "test": [], "test_phoebe": [], "test_soundscape": [], "test_other": []}
    for clip, species, fold in rows:
        if clip in DEFAULT_MODEL_EXCLUDE:
            continue
        path = clip_path(root, clip)
        length = audio_info(path).duration_s
        row = {"path": str(path), "length": length, "annotations": [{"st": 0.0, "ed": length, "label": species}]}
        held = test_fold is not None and fold == test_fold
        out["test_phoebe" if held else "train"].append(row)
    for path in soundscape_clips(root):
        row = {"path": str(path), "length": audio_info(path).duration_s, "annotations": []}
        out["test_soundscape" if path in held_soundscape else "train"].append(row)
    for rel in OTHER_SITE_NEGATIVES:
        out["train"].append({"path": str(root / rel), "length": audio_info(root / rel).duration_s, "annotations": []})
    for rel in OTHER_SITE_TESTS:
        out["test_other"].append({"path": str(root / rel), "length": audio_info(root / rel).duration_s,
                                  "annotations": []})
    out["test"] = out["test_phoebe"] + out["test_soundscape"]
    return out


def cmd_detect(args) -> None:
    root, work = data_root(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    listings = detect_listings(root, args.test_fold, args.soundscape_test)
    for name, rows in listings.items():
        if rows:
            (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            print(f"wrote {work / (name + '.jsonl')} ({len(rows)} recordings)")
    backgrounds = [r["path"] for r in listings["train"] if not r["annotations"]]
    (work / "backgrounds.txt").write_text("".join(p + "\n" for p in backgrounds))
    print(f"wrote {work / 'backgrounds.txt'} ({len(backgrounds)} recordings)")


def clip_licences(root: Path) -> dict[str, dict]:
    """clip id -> {author, url, license} from phoebe/audio/data/licenses.md (a markdown table)."""
    out = {}
    for line in (root / "phoebe" / "audio" / "data" / "licenses.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].endswith(".mp3"):
            out[cells[0][:-4]] = {"author": cells[1], "url": "https:" + cells[2], "license": "https:" + cells[3]}
    return out


def cmd_attribution(args) -> None:
    """A markdown table of the phoebe clips in a detection listing, with author and licence."""
    root = data_root(args.data)
    licences = clip_licences(root)
    species = {c: s for c, s, _ in read_folds()}
    lines = ["| xeno-canto clip | species | recordist | licence |", "|---|---|---|---|"]
    for line in Path(args.listing).read_text().splitlines():
        clip = Path(json.loads(line)["path"])
        if clip.suffix == ".mp3":
            c = licences[clip.stem]
            lines.append(f"| [XC{clip.stem}]({c['url']}) | {species[clip.stem]} | {c['author']} | {c['license']} |")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the real-data root (default ../shared/data/real)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("folds", help="write recipes/phoebe_folds.csv")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_folds)
    p = sub.add_parser("cv", help="per-fold train/test CSV listings")
    p.add_argument("work")
    p.set_defaults(func=cmd_cv)
    p = sub.add_parser("pretrain", help="the list of pre-training recordings")
    p.add_argument("work")
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("detect", help="detection JSONL listings for the default model")
    p.add_argument("work")
    p.add_argument("--test-fold", type=int, help="phoebe fold held out for testing (default: none)")
    p.add_argument("--soundscape-test", type=int, default=SOUNDSCAPE_TEST,
                   help="soundscape clips held out (0: none)")
    p.set_defaults(func=cmd_detect)
    p = sub.add_parser("attribution", help="markdown table of the phoebe clips in a detection listing")
    p.add_argument("listing")
    p.set_defaults(func=cmd_attribution)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
