"""Packaging: the top-level `conf/` folder ships inside the wheel as the package `binexp.conf`.

Everything else is in pyproject.toml; only this mapping needs code, because setuptools cannot
discover a package that lives outside its parent's folder.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["binexp", "binexp.*"]) + ["binexp.conf"],
    package_dir={"binexp.conf": "conf"},
    package_data={"binexp.conf": ["*.yaml", "*/*.yaml", "*/*/*.yaml"]},
)
