from core.config import RateLimits
from receiver.ratelimit import RateLimiter, client_key

LIMITS = RateLimits(
    requests_per_second=2.0,
    burst=4,
    auth_failures_per_minute=6.0,
    auth_failure_burst=2,
    max_clients=16,
)


def test_burst_then_refusal_with_retry_after_then_refill() -> None:
    limiter = RateLimiter(LIMITS)
    assert [limiter.check("a", 0.0) for _ in range(4)] == [None] * 4
    assert limiter.check("a", 0.0) == 1.0
    assert limiter.check("a", 0.5) is None  # half a second refills one token at 2/s


def test_clients_have_separate_buckets() -> None:
    limiter = RateLimiter(LIMITS)
    for _ in range(4):
        limiter.check("a", 0.0)
    assert limiter.check("a", 0.0) is not None
    assert limiter.check("b", 0.0) is None


def test_failed_auth_bucket_is_stricter_and_refills_slowly() -> None:
    limiter = RateLimiter(LIMITS)
    limiter.auth_failed("a", 0.0)
    limiter.auth_failed("a", 0.0)
    wait = limiter.check("a", 0.0)
    assert wait == 10.0  # 6 failures per minute: one every 10 s
    assert limiter.check("a", 9.0) is not None
    assert limiter.check("a", 10.0) is None


def test_memory_is_bounded_under_many_addresses() -> None:
    limiter = RateLimiter(LIMITS)
    for i in range(10_000):
        limiter.check(f"10.0.{i // 256}.{i % 256}", float(i))
    assert len(limiter) == LIMITS.max_clients


def test_clock_going_backwards_refills_nothing() -> None:
    limiter = RateLimiter(LIMITS)
    for _ in range(4):
        limiter.check("a", 100.0)
    assert limiter.check("a", 50.0) is not None


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("198.51.100.4") == "198.51.100.4"
