"""Request throttles that hold under concurrency, brute-force limits on bad tokens, and fail-open."""

import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from apps.accounts.services import api_token_create
from tests.factories import MembershipFactory


def _get(url: str, token: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})  # noqa: S310 (live_server)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.mark.django_db(transaction=True)
def test_sixteen_parallel_clients_on_one_token_get_exactly_the_limit_through(live_server, monkeypatch):
    from apps.accounts.throttling import TokenRateThrottle

    limit = 40
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"api": f"{limit}/hour"})
    token = api_token_create(membership=MembershipFactory(), name="flood").plaintext
    url = f"{live_server.url}/api/v1/me"
    start = threading.Barrier(16)

    def client(n: int) -> list[tuple[int, dict, dict]]:
        start.wait(timeout=60)
        return [_get(url, token) for _ in range(n)]

    # 3x the limit from 16 threads at once, each its own connection: the live server answers in threads.
    shares = [limit * 3 // 16 + (i < limit * 3 % 16) for i in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = [result for batch in pool.map(client, shares) for result in batch]

    assert len(results) == limit * 3
    codes = [code for code, _, _ in results]
    assert codes.count(200) == limit, {code: codes.count(code) for code in set(codes)}
    assert codes.count(429) == limit * 2
    for code, headers, body in results:
        if code == 429:
            assert 0 < int(headers["Retry-After"]) <= 3600
            assert body["code"] == "throttled" and body["retry_after_s"] == int(headers["Retry-After"])


@pytest.mark.django_db
def test_invalid_tokens_from_one_address_get_429_after_the_failure_limit(client, settings):
    from apps.accounts import throttling

    settings.API_AUTH_FAILURE_RATE = "5/minute"
    real = api_token_create(membership=MembershipFactory(), name="ci").plaintext
    wrong = real[:-4] + "AAAA"
    attacker = {"REMOTE_ADDR": "198.51.100.7"}
    bystander = {"REMOTE_ADDR": "198.51.100.8"}

    codes = [client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {wrong}", **attacker).status_code for _ in range(5)]
    assert codes == [401] * 5
    refused = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {wrong}", **attacker)
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 60
    assert refused.json()["code"] == "throttled"
    # Over the limit the token is not even checked: the right one gets the same answer from there.
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {real}", **attacker).status_code == 429
    # Another address is not affected, neither with the right token nor with a wrong one.
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {real}", **bystander).status_code == 200
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {wrong}", **bystander).status_code == 401
    assert throttling.AUTH_FAILURE_SCOPE  # the scope is named in docs/permissions.md


@pytest.mark.django_db
@pytest.mark.parametrize("spoil", ["revoked", "expired", "garbage"])
def test_revoked_expired_and_malformed_tokens_count_as_failures(client, settings, spoil):
    from datetime import timedelta

    from django.utils import timezone

    from apps.accounts.models import ApiToken
    from apps.accounts.services import api_token_revoke

    settings.API_AUTH_FAILURE_RATE = "2/minute"
    issued = api_token_create(membership=MembershipFactory(), name="ci")
    header = f"Token {issued.plaintext}"
    if spoil == "revoked":
        api_token_revoke(token=issued.token)
    elif spoil == "expired":
        ApiToken.objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        header = "Token not-a-token"
    codes = [client.get("/api/v1/me", HTTP_AUTHORIZATION=header, REMOTE_ADDR="203.0.113.9").status_code]
    codes += [client.get("/api/v1/me", HTTP_AUTHORIZATION=header, REMOTE_ADDR="203.0.113.9").status_code]
    codes += [client.get("/api/v1/me", HTTP_AUTHORIZATION=header, REMOTE_ADDR="203.0.113.9").status_code]
    assert codes == [401, 401, 429]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_with_the_throttle_store_unreachable_the_api_answers_and_counts_it(member, settings, caplog):
    """Fail open: nothing answers on the cache's port, yet submit queues the job; logged once, counted."""
    from apps.jobs.models import Job
    from apps.operations.metrics import REGISTRY

    _, client = member("developer")

    def unavailable() -> float:
        return REGISTRY.get_sample_value("switchyard_throttle_unavailable_total") or 0.0

    before = unavailable()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{_closed_port()}/1",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    with caplog.at_level(logging.WARNING, logger="apps.accounts.throttling"):
        created = client.post("/api/v1/jobs/", {"kind": "sleep", "params": {}}, format="json")
        assert created.status_code == 201, created.content
        for _ in range(5):
            assert client.get("/api/v1/me").status_code == 200

    assert Job.objects.get(pk=created.json()["id"]).status == "queued"
    warnings = [r for r in caplog.records if r.name == "apps.accounts.throttling"]
    assert [r.getMessage() for r in warnings] == ["throttle.store_unavailable"], "one warning, not one per request"
    assert not any(r.exc_info for r in warnings), "no traceback per request"
    # Each request makes two checks (failed authentications of the address, then the token budget).
    assert unavailable() - before == 12


def test_without_redis_the_per_process_limiter_is_exact_under_threads():
    from apps.accounts.throttling import LocalSlidingWindow

    window = LocalSlidingWindow()
    start = threading.Barrier(16)

    def hit(_):
        start.wait(timeout=30)
        return [window.hit("k", limit=40, window_s=3600).allowed for _ in range(8)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        allowed = [ok for batch in pool.map(hit, range(16)) for ok in batch]
    assert allowed.count(True) == 40
    refused = window.hit("k", limit=40, window_s=3600)
    assert not refused.allowed and 3590 < refused.retry_after_s <= 3600
    assert window.hit("other", limit=40, window_s=3600).allowed


def test_the_per_process_limiter_forgets_expired_keys(monkeypatch):
    from apps.accounts import throttling

    window = throttling.LocalSlidingWindow()
    monkeypatch.setattr(window, "SWEEP_AT_KEYS", 100)
    clock = [1000.0]
    monkeypatch.setattr(throttling.time, "monotonic", lambda: clock[0])
    for n in range(99):
        window.hit(f"address-{n}", limit=5, window_s=60)
    clock[0] += 61
    window.hit("late", limit=5, window_s=60)
    assert list(window._events) == ["late"]
