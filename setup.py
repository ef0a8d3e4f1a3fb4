"""Package map: the instrument drivers live in ``drivers/`` but install as ``qkdd.drivers``.

pyproject.toml cannot express a find-packages over two roots, so this file
only computes the package list; all metadata lives in pyproject.toml.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["qkdd", "qkdd.*"])
packages += ["qkdd.drivers"] + [f"qkdd.drivers.{p}" for p in find_packages("drivers")]

setup(packages=packages, package_dir={"qkdd.drivers": "drivers"})
