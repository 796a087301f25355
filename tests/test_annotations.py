"""Annotation readers: files written here with known content, error cases, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biomamba.data.annotations import (
    Annotation,
    AnnotationError,
    find_annotation_table,
    read_annotations,
    read_audacity,
    read_beans_csv,
    read_beans_jsonl,
    read_raven,
)


def real_data_dir() -> Path:
    d = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    if not d.is_dir():
        pytest.skip(f"real-data folder {d} absent")
    return d


RAVEN_HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\tNotes"


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- Raven


def test_raven_keeps_one_row_per_selection(tmp_path):
    p = write(tmp_path / "t.txt", [
        RAVEN_HEADER,
        "1\tWaveform 1\t1\t0.5\t1.25\t1000\t4000\tbird\t",
        "1\tSpectrogram 1\t1\t0.5\t1.25\t1000\t4000\tbird\t",
        "2\tWaveform 1\t2\t3\t4.5\t\t\tfrog\tloud",
        "2\tSpectrogram 1\t2\t3\t4.5\t\t\tfrog\tloud",
    ])
    assert read_raven(p) == [
        Annotation(0.5, 1.25, "bird", 1000.0, 4000.0, channel=1),
        Annotation(3.0, 4.5, "frog", None, None, channel=2),
    ]


def test_raven_label_column_choice(tmp_path):
    p = write(tmp_path / "t.txt", [
        "Selection\tBegin Time (s)\tEnd Time (s)\tCall Type\tAnnotation",
        "1\t0\t1\tsong\tGWWA",
    ])
    assert read_raven(p)[0].label == "GWWA"  # "Annotation" comes before "Call Type"
    assert read_raven(p, label_column="Call Type")[0].label == "song"
    with pytest.raises(AnnotationError, match=r"t\.txt:1: no label column 'Nope'.*Call Type"):
        read_raven(p, label_column="Nope")


def test_raven_unknown_label_column_lists_columns(tmp_path):
    p = write(tmp_path / "t.txt", ["Selection\tBegin Time (s)\tEnd Time (s)\tWho", "1\t0\t1\tx"])
    with pytest.raises(AnnotationError) as e:
        read_raven(p)
    assert e.value.path == p and e.value.line == 1
    assert "Who" in str(e.value) and "Species" in str(e.value)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("1\tS\t1\tabc\t2\t\t\tbird\t", "not a number"),
        ("1\tS\t1\t3\t2\t\t\tbird\t", "before start"),
        ("1\tS\t1\t-1\t2\t\t\tbird\t", "negative"),
        ("1\tS\t1\t1\t2\t\t\t\t", "empty label"),
        ("1\tS\t1\t1\t2\tlow\t\tbird\t", "not a number"),
        ("1\tS\t1\t1\t99\t\t\tbird\t", "after the recording"),
    ],
)
def test_raven_errors_name_file_and_line(tmp_path, row, reason):
    p = write(tmp_path / "bad.selections.txt", [RAVEN_HEADER, "", row])
    with pytest.raises(AnnotationError, match=reason) as e:
        read_raven(p, duration_s=10.0)
    assert e.value.line == 3
    assert str(e.value).startswith(f"{p}:3: ")


def test_raven_missing_file_and_not_raven(tmp_path):
    with pytest.raises(AnnotationError, match="no such file"):
        read_raven(tmp_path / "none.txt")
    p = write(tmp_path / "x.txt", ["a\tb", "1\t2"])
    with pytest.raises(AnnotationError, match="Begin Time"):
        read_raven(p)


def test_raven_latin1_and_bom(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(("\ufeff" + "Begin Time (s)\tEnd Time (s)\tSpecies\n0\t1\tmésange\n").encode("utf-8"))
    assert read_raven(p)[0].label == "mésange"
    p.write_bytes("Begin Time (s)\tEnd Time (s)\tSpecies\n0\t1\tmésange\n".encode("latin-1"))
    assert read_raven(p)[0].label == "mésange"


def test_real_raven_table():
    table = real_data_dir() / "oss/docs/tutorials/resources/GWWA_XC_AnnoTables/13738.Table.1.selections.txt"
    rows = [line.split("\t") for line in table.read_text().splitlines()[1:] if line.strip()]
    got = read_raven(table, duration_s=60.0)
    assert len(got) == len(rows) == 8
    assert [a.label for a in got].count("GWWA_song") == 7 and got[2].label == "?"
    for a, row in zip(got, rows, strict=True):
        assert a.start_s == float(row[3]) and a.end_s == float(row[4])
        assert a.low_hz == float(row[5]) and a.high_hz == float(row[6])


# --------------------------------------------------------------------------- Audacity


def test_audacity_with_frequency_lines(tmp_path):
    p = write(tmp_path / "a.txt", [
        "0.1\t0.4\tSP",
        "\\\t6000.5\t12000",
        "1.0\t2.5\tCRER",
        "3\t3\tpoint label",
        "\\\t-1\t-1",
    ])
    assert read_audacity(p) == [
        Annotation(0.1, 0.4, "SP", 6000.5, 12000.0),
        Annotation(1.0, 2.5, "CRER"),
        Annotation(3.0, 3.0, "point label"),
    ]


@pytest.mark.parametrize(
    ("lines", "line", "reason"),
    [
        (["\\\t1\t2"], 1, "before any label"),
        (["0\t1\tx", "0\t1"], 2, "expected"),
        (["0\tone\tx"], 1, "not a number"),
        (["2\t1\tx"], 1, "before start"),
        (["0\t1\tx", "\\\tlow\t2"], 2, "not a number"),
        (["0\t1\tx", "5\t30\ty"], 2, "after the recording"),
    ],
)
def test_audacity_errors(tmp_path, lines, line, reason):
    p = write(tmp_path / "a.txt", lines)
    with pytest.raises(AnnotationError, match=reason) as e:
        read_audacity(p, duration_s=20.0)
    assert e.value.line == line and str(p) in str(e.value)


def test_real_audacity_file():
    path = real_data_dir() / "maad/data/spinetail.txt"
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    got = read_audacity(path, duration_s=19.6)
    assert len(got) == len(lines) // 2 == 18
    assert sum(a.label == "SP" for a in got) == 14 and sum(a.label == "CRER" for a in got) == 4
    for a, label_line, freq_line in zip(got, lines[::2], lines[1::2], strict=True):
        start, end, label = label_line.split("\t")
        _, low, high = freq_line.split("\t")
        assert (a.start_s, a.end_s, a.label, a.low_hz, a.high_hz) == (
            float(start), float(end), label, float(low), float(high))
    assert read_annotations(path) == got


# --------------------------------------------------------------------------- either / next to recordings


def test_read_annotations_detects_format(tmp_path):
    raven = write(tmp_path / "r.txt", ["Begin Time (s)\tEnd Time (s)\tLabel", "1\t2\tx"])
    audacity = write(tmp_path / "a.txt", ["1\t2\tx"])
    assert read_annotations(raven) == read_annotations(audacity) == [Annotation(1.0, 2.0, "x")]


def test_find_annotation_table_order(tmp_path):
    rec = tmp_path / "site.rec1.wav"
    assert find_annotation_table(rec) is None
    (tmp_path / "site.rec1.txt").write_text("")
    assert find_annotation_table(rec) == tmp_path / "site.rec1.txt"
    (tmp_path / "site.rec1.selections.txt").write_text("")
    assert find_annotation_table(rec) == tmp_path / "site.rec1.selections.txt"
    (tmp_path / "site.rec1.Table.1.selections.txt").write_text("")
    assert find_annotation_table(rec) == tmp_path / "site.rec1.Table.1.selections.txt"


# --------------------------------------------------------------------------- BEANS


def test_beans_jsonl(tmp_path):
    (tmp_path / "wav").mkdir()
    rows = [
        {"path": "wav/a.wav", "length": 60.0, "annotations": [{"st": 1.5, "ed": 2.0, "label": "x"}]},
        {"path": str(tmp_path / "abs.wav"), "length": 10, "annotations": []},
    ]
    p = write(tmp_path / "train.jsonl", [json.dumps(r) for r in rows])
    items = read_beans_jsonl(p)
    assert items[0].path == tmp_path.resolve() / "wav/a.wav"
    assert items[0].length_s == 60.0
    assert items[0].annotations == [Annotation(1.5, 2.0, "x")]
    assert items[1].path == tmp_path / "abs.wav" and items[1].annotations == []


def test_beans_paths_relative_to_an_ancestor(tmp_path):
    # BEANS layout: data/dcase/train.jsonl lists data/dcase/wav/x.wav (relative to the repo root)
    (tmp_path / "data/dcase/wav").mkdir(parents=True)
    (tmp_path / "data/dcase/wav/x.wav").write_bytes(b"")
    p = write(tmp_path / "data/dcase/train.jsonl",
              [json.dumps({"path": "data/dcase/wav/x.wav", "length": 1, "annotations": []})])
    assert read_beans_jsonl(p)[0].path == tmp_path.resolve() / "data/dcase/wav/x.wav"
    c = write(tmp_path / "data/dcase/train.csv", ["path,label", "data/dcase/wav/x.wav,dog"])
    assert read_beans_csv(c) == [(tmp_path.resolve() / "data/dcase/wav/x.wav", "dog")]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"path": "a.wav", "length": 5}', "annotations"),
        ('{"path": "a.wav", "length": "five", "annotations": []}', "not a number"),
        ('{"path": "a.wav", "length": 5, "annotations": [{"st": "x", "ed": 1, "label": "a"}]}', "not a number"),
        ('{"path": "a.wav", "length": 5, "annotations": [{"st": 2, "ed": 1, "label": "a"}]}', "before start"),
        ('{"path": "a.wav", "length": 5, "annotations": [{"st": 4, "ed": 6, "label": "a"}]}', "after the recording"),
        ('{"path": "a.wav", "length": 5, "annotations": [{"st": 1, "label": "a"}]}', "annotation 0"),
    ],
)
def test_beans_jsonl_errors(tmp_path, line, reason):
    good = json.dumps({"path": "a.wav", "length": 5, "annotations": []})
    p = write(tmp_path / "x.jsonl", [good, line])
    with pytest.raises(AnnotationError, match=reason) as e:
        read_beans_jsonl(p)
    assert e.value.line == 2 and str(e.value).startswith(f"{p}:2: ")


def test_beans_csv(tmp_path):
    p = write(tmp_path / "train.csv", ["path,label,extra", "a.wav,dog,1", '"b, c.wav",cat,2', ""])
    assert read_beans_csv(p) == [(tmp_path.resolve() / "a.wav", "dog"), (tmp_path.resolve() / "b, c.wav", "cat")]


def test_beans_csv_errors(tmp_path):
    p = write(tmp_path / "x.csv", ["file,label", "a.wav,dog"])
    with pytest.raises(AnnotationError, match="1: header"):
        read_beans_csv(p)
    p = write(tmp_path / "y.csv", ["path,label", "a.wav,dog", "b.wav,"])
    with pytest.raises(AnnotationError, match=r"y\.csv:3: empty label"):
        read_beans_csv(p)
    p = write(tmp_path / "z.csv", ["path,label", "a.wav"])
    with pytest.raises(AnnotationError, match=r"z\.csv:2: "):
        read_beans_csv(p)
    with pytest.raises(AnnotationError, match="no such file"):
        read_beans_csv(tmp_path / "missing.csv")


def test_beans_csv_split_column(tmp_path):
    """A CSV with a `split` column (InsectSet32's files.csv): --split keeps that split's rows only."""
    rows = ["path,label,split", "a.wav,dog,train", "b.wav,cat,validation", "c.wav,cat,train", "d.wav,dog,"]
    p = write(tmp_path / "files.csv", rows)
    assert len(read_beans_csv(p)) == 4
    assert read_beans_csv(p, split="train") == [(tmp_path.resolve() / "a.wav", "dog"),
                                                (tmp_path.resolve() / "c.wav", "cat")]
    assert read_beans_csv(p, split="validation") == [(tmp_path.resolve() / "b.wav", "cat")]
    with pytest.raises(AnnotationError, match=r"files\.csv: no row of split 'test'; its splits: , train, validation"):
        read_beans_csv(p, split="test")
    q = write(tmp_path / "plain.csv", ["path,label", "a.wav,dog"])
    with pytest.raises(AnnotationError, match=r"plain\.csv:1: no 'split' column"):
        read_beans_csv(q, split="train")


def test_readers_and_windowing_import_without_torch():
    import subprocess
    import sys

    code = ("import sys, biomamba.data, biomamba.data.annotations, biomamba.data.windows; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
