"""Reading memories from a JSONL or CSV file, with every bad line reported by number (no Django)."""

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

FORMATS = ("jsonl", "csv")
FIELDS = ("text", "kind", "importance", "created_at", "embedding")
MAX_TEXT_CHARS = 20_000
MAX_ERRORS_REPORTED = 20


@dataclass(frozen=True)
class MemoryRow:
    line: int  # 1-based line of the file (CSV: counting the header), the row's identity within an import
    text: str
    kind: str
    importance: float
    created_at: datetime | None
    embedding: list[float] | None


class MemoryFileError(Exception):
    """The file cannot be imported; `errors` lists `line N: reason` for the first bad lines."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


def detect_format(name: str) -> str | None:
    suffix = Path(name).suffix.lower().lstrip(".")
    return {"jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv"}.get(suffix)


def read_memory_rows(
    path: Path, fmt: str, *, dimension: int, kinds: tuple[str, ...], default_kind: str, max_rows: int
) -> list[MemoryRow]:
    """All rows of the file, or MemoryFileError naming the bad lines. Nothing is imported from a bad file."""
    if fmt not in FORMATS:
        raise MemoryFileError([f"format must be one of {', '.join(FORMATS)}"])
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MemoryFileError([f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    records = _jsonl_records(text) if fmt == "jsonl" else _csv_records(text)
    rows: list[MemoryRow] = []
    errors: list[str] = []
    for line, record in records:
        if len(rows) + len(errors) >= max_rows:
            errors.append(f"more than {max_rows} rows; split the file")
            break
        try:
            rows.append(_row(line, record, dimension=dimension, kinds=kinds, default_kind=default_kind))
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
        if len(errors) >= MAX_ERRORS_REPORTED:
            errors.append("(further lines not checked)")
            break
    if errors:
        raise MemoryFileError(errors)
    if not rows:
        raise MemoryFileError(["the file holds no memories"])
    return rows


def _jsonl_records(text: str):
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield number, ValueError(f"not valid JSON ({exc.msg})")
            continue
        yield number, record if isinstance(record, dict) else ValueError("must be a JSON object")


def _csv_records(text: str):
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if "text" not in header:
        yield 1, ValueError(f"the header must name a 'text' column (columns: {', '.join(FIELDS)})")
        return
    unknown = [name for name in header if name not in FIELDS]
    if unknown:
        yield 1, ValueError(f"unknown columns {unknown} (columns: {', '.join(FIELDS)})")
        return
    try:
        for record in reader:
            if None in record:
                yield reader.line_num, ValueError("more values than columns")
                continue
            cleaned = {key: value for key, value in record.items() if value not in ("", None)}
            if "embedding" in cleaned:
                try:
                    cleaned["embedding"] = json.loads(cleaned["embedding"])
                except json.JSONDecodeError:
                    yield reader.line_num, ValueError("embedding: must be a JSON array of numbers")
                    continue
            yield reader.line_num, cleaned
    except csv.Error as exc:
        yield reader.line_num, ValueError(f"not valid CSV ({exc})")


def _row(line: int, record, *, dimension: int, kinds, default_kind: str) -> MemoryRow:
    if isinstance(record, ValueError):
        raise record
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown fields {unknown}")
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: required, a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text: at most {MAX_TEXT_CHARS} characters")
    kind = record.get("kind", default_kind)
    if kind not in kinds:
        raise ValueError(f"kind: '{kind}' is not one of {', '.join(kinds)}")
    importance = _importance(record.get("importance", 0.5))
    created_at = _timestamp(record.get("created_at"))
    embedding = record.get("embedding")
    if embedding is not None:
        embedding = clean_vector(embedding, dimension=dimension, field="embedding")
    return MemoryRow(line, text.strip(), kind, importance, created_at, embedding)


def _importance(value) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"importance: a number from 0 to 1, not {value!r}")
    return number


def _timestamp(value) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError(f"created_at: an ISO 8601 date-time, not {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


HALF_MAX = 65504.0
HALF_SMALLEST = 6.0e-8  # fp16's smallest subnormal is 5.96e-8


def vector_problem(value, *, dimension: int) -> str | None:
    """Why `value` is not a usable embedding of `dimension` numbers, or None."""
    if not isinstance(value, list | tuple):
        return f"must be an array of {dimension} numbers"
    if len(value) != dimension:
        return f"expected {dimension} numbers, got {len(value)}"
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return "must contain numbers only"
    if not all(math.isfinite(x) for x in value):
        return "must contain finite numbers only (no NaN or infinity)"
    # Cosine distance to a zero vector is undefined: pgvector returns NaN and it sorts anywhere.
    if not any(value):
        return "must not be all zeros (cosine distance is undefined)"
    # The HNSW indexes hold half precision (docs/decisions/0013): beyond its range a vector
    # cannot be indexed, and below its smallest step it would index as zeros.
    largest = max(abs(x) for x in value)
    if largest > HALF_MAX:
        return f"components must be within ±{HALF_MAX:g} (the search index stores half precision)"
    if largest < HALF_SMALLEST:
        return f"components are too small to index: the largest must be at least {HALF_SMALLEST:g} in magnitude"
    return None


def clean_vector(value, *, dimension: int, field: str) -> list[float]:
    problem = vector_problem(value, dimension=dimension)
    if problem is not None:
        raise ValueError(f"{field}: {problem}")
    return [float(x) for x in value]
