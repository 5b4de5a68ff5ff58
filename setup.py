"""Packaging metadata is in pyproject.toml; this adds what it cannot say declaratively: the packages found
under groupbert/, optimizers/ and custom_ops/ (so a new subpackage needs no edit here) together with the
shipped recipes, configs/, installed as the data-only package ``groupbert.configs``
(``groupbert.config.bundled_configs`` finds them there, or in the checkout)."""
from setuptools import find_packages, setup

PACKAGES = find_packages(include=["groupbert", "groupbert.*", "optimizers", "optimizers.*", "custom_ops",
                                  "custom_ops.*"])
setup(packages=[*PACKAGES, "groupbert.configs"], package_dir={"groupbert.configs": "configs"})
