import os

import pytest


def pytest_configure(config):
    # Tests never touch the user's dataset cache.
    os.environ.setdefault("ZOO_DATA_DIR", str(config.rootpath / ".pytest_cache" / "zoo-data"))
    # The suite tests zoo and the plugins it makes itself, whatever else is installed: plugins
    # of other distributions found in this environment are disabled for the session.
    from importlib import metadata

    import zoo

    foreign = sorted({ep.name for ep in metadata.entry_points(group="zoo")
                      if ep.dist is None or ep.dist.metadata["Name"] != zoo.DISTRIBUTION})
    if foreign:
        listed = [n for n in os.environ.get("ZOO_DISABLE_PLUGINS", "").split(",") if n]
        os.environ["ZOO_DISABLE_PLUGINS"] = ",".join(listed + foreign)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ZOO_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set ZOO_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Each test sees the installed plugins only, whatever an earlier test registered."""
    import zoo.plugins

    zoo.plugins.reset()
    yield
    zoo.plugins.reset()
