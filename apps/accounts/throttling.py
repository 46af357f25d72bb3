"""Request rate limits per API token (or session user), and failed authentications per client address.

Counting is a sliding-window log kept by one Lua script on the Redis behind the default
cache: trimming, counting and recording happen in one atomic step and the clock is the
server's (`TIME`), so any number of web processes and hosts share one exact budget
(docs/decisions/0014). Without a Redis cache (locmem) the same algorithm runs in process
memory under a lock: exact for one process. When the Redis is unreachable the API stays
up: decisions fall back to the per-process log, one warning is logged per outage and
`switchyard_throttle_unavailable_total` counts every check made without the shared store.
"""

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from prometheus_client import Counter
from redis.exceptions import RedisError
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from apps.accounts.models import ApiToken

logger = logging.getLogger(__name__)

API_SCOPE = "api"
AUTH_FAILURE_SCOPE = "auth-failure"
# After a failed call to Redis, decide locally for this long before trying it again: a dead
# server costs one connection attempt per process every few seconds, not one per request.
STORE_RETRY_AFTER_S = 5.0
# During a longer outage, repeat the warning at most this often per process.
STORE_WARNING_EVERY_S = 300.0

THROTTLE_UNAVAILABLE = Counter(
    "switchyard_throttle_unavailable",
    "Throttle checks decided by the per-process fallback because the shared Redis did not answer.",
    registry=None,  # exposed by apps/operations/metrics.py
)

# KEYS[1]: the sorted set of one key's events (score and member: the event's time).
# ARGV: limit, window in microseconds, "1" to record this event when allowed ("0" only looks).
# Returns {allowed (1/0), microseconds until the oldest event leaves the window}.
SLIDING_WINDOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = window
  if oldest[2] then wait = tonumber(oldest[2]) + window - now end
  return {0, wait}
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now, t[1] .. '.' .. t[2] .. '-' .. count)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
end
return {1, 0}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0


def parse_rate(rate: str) -> tuple[int, int]:
    """'100/minute' -> (100, 60): DRF's notation, the period by its first letter (s, m, h, d)."""
    count, _, period = rate.partition("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period.strip()[0]]


class LocalSlidingWindow:
    """The same log in this process's memory, under a lock: exact for one process."""

    # Keys whose events have all expired are swept once this many exist (many client
    # addresses must not grow a process without bound).
    SWEEP_AT_KEYS = 10_000

    def __init__(self):
        self._lock = threading.Lock()
        self._events: dict[str, tuple[float, deque]] = {}

    def hit(self, key: str, *, limit: int, window_s: float, record: bool = True) -> Decision:
        now = time.monotonic()
        with self._lock:
            _, events = self._events.setdefault(key, (window_s, deque()))
            while events and events[0] <= now - window_s:
                events.popleft()
            if len(events) >= limit:
                return Decision(False, events[0] + window_s - now if events else window_s)
            if record:
                events.append(now)
                if len(self._events) >= self.SWEEP_AT_KEYS:
                    self._sweep(now)
            elif not events:
                del self._events[key]
            return Decision(True)

    def _sweep(self, now: float) -> None:
        for key, (window_s, events) in list(self._events.items()):
            if not events or events[-1] <= now - window_s:
                del self._events[key]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


class _StoreHealth:
    """When Redis may be tried again, and when the last warning was logged (per process)."""

    def __init__(self):
        self.retry_at = 0.0
        self.warned_at: float | None = None

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.retry_at = now + STORE_RETRY_AFTER_S
        if self.warned_at is None or now - self.warned_at >= STORE_WARNING_EVERY_S:
            self.warned_at = now
            # A message and the error's name, no traceback: this can repeat for every request.
            logger.warning("throttle.store_unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})

    def reset(self) -> None:
        self.retry_at, self.warned_at = 0.0, None

    def recovered(self) -> None:
        if self.warned_at is not None:
            logger.info("throttle.store_available")
        self.reset()


_local = LocalSlidingWindow()
_health = _StoreHealth()


def reset() -> None:
    """Forget per-process state (tests: one test's counters must not spend another's budget)."""
    _local.clear()
    _health.reset()


def hit(scope: str, ident: str, *, rate: str, record: bool = True) -> Decision:
    """Count one event of `ident` in `scope` against `rate` (unless `record` is false: only look)."""
    limit, window_s = parse_rate(rate)
    cache = caches["default"]
    key = cache.make_key(f"throttle:{scope}:{ident}")
    if not isinstance(cache, RedisCache):
        return _local.hit(key, limit=limit, window_s=window_s, record=record)
    if time.monotonic() < _health.retry_at:
        THROTTLE_UNAVAILABLE.inc()
        return _local.hit(key, limit=limit, window_s=window_s, record=record)
    try:
        # Django's RedisCache keeps its redis-py client (and connection pool) on `_cache`.
        client = cache._cache.get_client(key, write=True)
        # EVALSHA, and EVAL when the server has not seen the script (first use, after a restart).
        script = client.register_script(SLIDING_WINDOW_LUA)
        allowed, wait_us = script(keys=[key], args=[limit, window_s * 1_000_000, int(record)])
    except (RedisError, OSError) as exc:
        _health.failed(exc)
        THROTTLE_UNAVAILABLE.inc()
        return _local.hit(key, limit=limit, window_s=window_s, record=record)
    _health.recovered()
    return Decision(bool(allowed), int(wait_us) / 1_000_000)


class TokenRateThrottle(BaseThrottle):
    """Each token has its own budget, so a noisy integration cannot starve its owner's other tokens."""

    scope = API_SCOPE
    THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES

    def allow_request(self, request, view) -> bool:
        if isinstance(request.auth, ApiToken):
            ident = f"token:{request.auth.prefix}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"anon:{request.META.get('REMOTE_ADDR', '')}"
        self.decision = hit(self.scope, ident, rate=self.THROTTLE_RATES[self.scope])
        return self.decision.allowed

    def wait(self) -> float:
        return self.decision.retry_after_s


def auth_failures_check(address: str) -> None:
    """Refuse (429) a client address that failed authentication too often, before its token is checked."""
    decision = hit(AUTH_FAILURE_SCOPE, address, rate=settings.API_AUTH_FAILURE_RATE, record=False)
    if not decision.allowed:
        raise exceptions.Throttled(
            wait=max(math.ceil(decision.retry_after_s), 1),
            detail="Too many failed authentications from this address.",
        )


def auth_failure_record(address: str) -> None:
    hit(AUTH_FAILURE_SCOPE, address, rate=settings.API_AUTH_FAILURE_RATE)
