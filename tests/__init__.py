"""The test suite.

Hypothesis runs without a per-example deadline and without its "too slow"
health check: the suite shares two cores with the programs it starts, and a
slow machine must not turn into a failed property.  No test asserts timing.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("cryptify", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cryptify")
