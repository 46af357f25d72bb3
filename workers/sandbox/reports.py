"""What a sandbox host reports back, and the per-run key that proves it was given the run.

Plain Python (no Django): the sandbox host builds reports with it and the control side checks them.
A report is `{"report": NAME, "payload": JSON TEXT, "mac": HEX}`. The payload is the report's
arguments as the host serialised them, and the MAC is HMAC-SHA256 over exactly that text under the
run's token, which only the control side (it derives tokens from its secret) and the host that took
the run's message know. A report for any other run, or a payload changed on the way, fails the check;
the token itself never travels back, so a report read off the broker gives nothing away.
"""

import hashlib
import hmac
import json

STARTED, OUTPUT, FINISHED, HOST = "started", "output", "finished", "host"
# Reports that speak for a run carry its MAC; host upkeep (`host`) speaks for no run.
RUN_REPORTS = (STARTED, OUTPUT, FINISHED)
REPORTS = (*RUN_REPORTS, HOST)


def report_mac(token: str, payload: str) -> str:
    return hmac.new(token.encode(), payload.encode(), hashlib.sha256).hexdigest()


def report_body(report: str, args: list, token: str | None) -> dict:
    """The message body of one report; `token` is the run's (None for host upkeep)."""
    payload = json.dumps([report, *args], separators=(",", ":"))
    return {"report": report, "payload": payload, "mac": report_mac(token, payload) if token else None}


def report_mac_matches(token: str, payload: str, mac) -> bool:
    return isinstance(mac, str) and hmac.compare_digest(report_mac(token, payload), mac)
