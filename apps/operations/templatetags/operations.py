"""Template filters for the operator dashboard."""

from datetime import timedelta

from django import template

register = template.Library()


@register.filter
def run_time(value: timedelta | None) -> str:
    """`0.81 s`, `12.3 s`, `4 min 05 s`, `2 h 07 min`: as precise as a person reading a table needs."""
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
