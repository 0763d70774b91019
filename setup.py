"""Packaging: the top-level `conf/` folder ships inside the wheel as the package `binexp.conf`.

Everything else is in pyproject.toml; only this mapping needs code, because setuptools cannot
discover a package that lives outside its parent's folder. Each config group folder is listed as a
(namespace) package of its own so its YAML files travel with it.
"""

from setuptools import find_namespace_packages, find_packages, setup

CONF_GROUPS = [f"binexp.conf.{name}" for name in find_namespace_packages(where="conf")]

setup(
    packages=find_packages(include=["binexp", "binexp.*"]) + ["binexp.conf", *CONF_GROUPS],
    package_dir={"binexp.conf": "conf"},
    package_data={"": ["*.yaml"]},
)
