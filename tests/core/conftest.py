"""Hypothesis profiles for the core's property tests, chosen by HYPOTHESIS_PROFILE.

"ci" (the default, what `make test` runs) gives each property test 1,700 examples: with the six
property tests in test_core_properties.py that is 10,200 examples, in about 35 s. "nightly" runs
ten times as many. Deadlines are off: a slow shared runner is not a bug.

The profiles are registered here but not loaded globally: test_core_properties.py applies the
chosen one to its own tests, so the other suites' @given tests keep their own example counts.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=1_700, deadline=None, print_blob=True)
settings.register_profile(
    "nightly",
    max_examples=17_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
