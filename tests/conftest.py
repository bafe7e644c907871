import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_results(tmp_path_factory) -> Path:
    """A results folder from a real small run of the platform (tests/realrun.py), built once per
    session; $PLATFORM_FIXTURE_RESULTS may point at one built earlier."""
    given = os.environ.get("PLATFORM_FIXTURE_RESULTS")
    if given:
        return Path(given)
    from tests.realrun import build_real_results

    return build_real_results(tmp_path_factory.mktemp("real_results"))
