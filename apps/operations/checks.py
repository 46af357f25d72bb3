"""System checks for the operations settings: a typo in a network list fails at start, not at scrape."""

import ipaddress

from django.conf import settings
from django.core.checks import Error, register


@register()
def metrics_access(app_configs, **kwargs) -> list[Error]:
    errors = []
    for entry in settings.METRICS_ALLOWED_NETWORKS:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            errors.append(
                Error(
                    f"METRICS_ALLOWED_NETWORKS: '{entry}' is not an IP network ({exc}).",
                    hint="Use CIDR notation, e.g. 10.0.0.0/8,127.0.0.1/32.",
                    id="operations.E001",
                )
            )
    token = settings.METRICS_TOKEN
    if token and len(token) < 16:
        errors.append(
            Error(
                "METRICS_TOKEN: shorter than 16 characters.",
                hint="Generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`.",
                id="operations.E002",
            )
        )
    return errors
