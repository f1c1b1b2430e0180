"""The installed version of a package: the one place adapter rows and integrations read it."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Optional

from packaging.version import InvalidVersion, Version


@functools.cache
def installed_version(package: str) -> Optional[Version]:
    try:
        return Version(version(package))
    except (PackageNotFoundError, InvalidVersion):
        return None
