"""`manage.py bench vectors` at a small size: it runs end to end and ends with its key=value summary."""

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_bench_vectors_prints_recall_latency_and_build_time_and_cleans_up():
    out = StringIO()
    call_command("bench", "vectors", "--rows", "2000", "--queries", "40", "--ef", "40", "100", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert any(line.startswith("ef_search=40 ") for line in lines) and any(
        "iterative_scan=off" in line for line in lines
    )
    summary = dict(pair.split("=") for pair in lines[-1].split())
    assert set(summary) == {"recall_at_10", "p50_ms", "p99_ms", "build_s", "ef_search", "rows", "index"}
    assert float(summary["recall_at_10"]) >= 0.95 and summary["rows"] == "2000"
    assert re.fullmatch(r"\d+(\.\d+)?", summary["p50_ms"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'bench_vectors_%%'")
        assert cursor.fetchone()[0] == 0
