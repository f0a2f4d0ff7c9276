"""Where the Hydra configs are: one directory for every ``softlabel-*`` app.

The YAML files live in ``conf/`` at the top of the repository. A wheel ships them as the
package data ``softlabel/conf/`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml),
so an installed softlabel finds them next to its code, and a checkout (or an editable
install of one) finds ``conf/`` beside the ``softlabel`` package.
"""

from __future__ import annotations

import os

__all__ = ["CONF_DIR", "conf_dir"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def conf_dir() -> str:
    """The absolute path of the config directory (the one that holds ``train.yaml``).

    ``softlabel/conf`` when installed from a wheel, else ``conf/`` of the checkout. When
    neither exists, the packaged path, so that Hydra's error names where it looked.
    """
    packaged = os.path.join(_PACKAGE, "conf")
    checkout = os.path.join(os.path.dirname(_PACKAGE), "conf")
    for candidate in (packaged, checkout):
        if os.path.isfile(os.path.join(candidate, "train.yaml")):
            return candidate
    return packaged


CONF_DIR = conf_dir()
