"""Resilience policies: retry, timeout, circuit breaker, bulkhead, fallback."""
