"""Hypothesis profiles for the core's property tests, chosen by HYPOTHESIS_PROFILE.

"ci" (the default, what `make test` runs) gives each property test 400 examples: with the eight
property tests in test_core_properties.py that is 3,200 scenarios of up to 30 decisions each,
25 to 50 s with both cores busy (the whole of tests/core 31 to 47 s). "nightly" (what `make
test-deep` runs) gives each 17,000: 18 min for the eight, about 135 s each, on two busy cores.
"mutation" (what `make mutation` runs) gives each 150 examples, the same ones on every run
(derandomized, no example database) and skips shrinking: a mutant is killed by the first
failure, and its minimal example is not needed. Deadlines are off: a slow shared runner is not a
bug.

The profiles are registered here but not loaded globally: test_core_properties.py applies the
chosen one to its own tests, so the other suites' @given tests keep their own example counts.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

settings.register_profile("ci", max_examples=400, deadline=None, print_blob=True)
settings.register_profile(
    "nightly",
    max_examples=17_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "mutation",
    max_examples=150,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
