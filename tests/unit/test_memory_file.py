"""Reading memory import files: every bad line named, nothing read from a bad file."""

import json

import pytest

from workers.memory_file import MemoryFileError, read_memory_rows

KINDS = ("observation", "fact")


def read(path, fmt, dimension=3):
    return read_memory_rows(path, fmt, dimension=dimension, kinds=KINDS, default_kind="observation", max_rows=100)


def test_jsonl_rows_with_defaults_timestamps_and_vectors(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [
        {"text": " first "},
        {"text": "second", "kind": "fact", "importance": 0.9, "created_at": "2026-01-02T03:04:05Z"},
        {"text": "third", "embedding": [1, 0, 0.5]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    rows = read(path, "jsonl")
    assert [(r.line, r.text, r.kind, r.importance) for r in rows] == [
        (1, "first", "observation", 0.5),
        (2, "second", "fact", 0.9),
        (4, "third", "observation", 0.5),
    ]
    assert rows[1].created_at.isoformat() == "2026-01-02T03:04:05+00:00"
    assert rows[2].embedding == [1.0, 0.0, 0.5] and rows[0].embedding is None


def test_csv_rows_with_an_embedding_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('text,kind,importance,embedding\n"hello, world",fact,0.2,"[0, 1, 0]"\nplain,,,\n')
    rows = read(path, "csv")
    assert [(r.line, r.text, r.kind, r.importance, r.embedding) for r in rows] == [
        (2, "hello, world", "fact", 0.2, [0.0, 1.0, 0.0]),
        (3, "plain", "observation", 0.5, None),
    ]


def test_every_bad_line_is_named(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"text": "ok"}),
                "{not json",
                json.dumps({"text": ""}),
                json.dumps({"text": "x", "kind": "dream"}),
                json.dumps({"text": "x", "importance": 2}),
                json.dumps({"text": "x", "embedding": [1, 2]}),
                json.dumps({"text": "x", "embedding": [0, 0, 0]}),
                json.dumps({"text": "x", "created_at": "yesterday"}),
                json.dumps({"text": "x", "colour": "red"}),
            ]
        )
    )
    with pytest.raises(MemoryFileError) as caught:
        read(path, "jsonl")
    errors = caught.value.errors
    assert [e.split(":")[0] for e in errors] == [f"line {n}" for n in range(2, 10)]
    assert "kind: 'dream'" in errors[2] and "expected 3 numbers, got 2" in errors[4] and "all zeros" in errors[5]


def test_a_csv_without_a_text_column_is_refused(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("body\nhello\n")
    with pytest.raises(MemoryFileError, match="'text' column"):
        read(path, "csv")


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n")
    with pytest.raises(MemoryFileError, match="no memories"):
        read(path, "jsonl")


def test_vectors_outside_half_precision_are_refused_with_the_reason():
    from workers.memory_file import vector_problem

    assert vector_problem([1.0, 70000.0, 0.0], dimension=3).startswith("components must be within ±65504")
    assert "too small to index" in vector_problem([1e-9, -2e-9, 0.0], dimension=3)
    assert vector_problem([0.5, -65504.0, 1e-3], dimension=3) is None
