"""Shared pytest configuration. Must not import torch: the reference env has none."""
import os

from hypothesis import HealthCheck, Phase, settings

# "ci": derandomised, so a CI run is reproducible; the default for tox and .ci/run.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# "thorough": many random examples, for local runs before a release.
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# "repro": replay a failure printed with print_blob, without the example database.
settings.register_profile("repro", deadline=None, database=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
