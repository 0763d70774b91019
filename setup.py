"""Packaging: the top-level `conf/` folder ships inside the wheel as the package `binexp.conf`.

Everything else is in pyproject.toml; only this mapping needs code, because setuptools cannot
discover a package that lives outside its parent's folder. Each config group folder is listed as a
(namespace) package of its own so its YAML files travel with it.

The popcount kernel of the export runtime is a small C library compiled for the installing machine
(-march=native: the popcnt instruction, AVX2 where there is one). It is optional: without a compiler the install
still succeeds and the runtime uses numpy's bitwise_count instead, as it does where the build was made for
instructions the running CPU lacks (an install shared by the nodes of a mixed cluster).
"""

import platform

from setuptools import Extension, find_namespace_packages, find_packages, setup

NATIVE = ["-march=native"] if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64") else []
POPCOUNT = Extension(
    "binexp.export._popcount",
    sources=["binexp/export/_popcount.c"],
    extra_compile_args=["-O3", "-fopenmp", *NATIVE],
    extra_link_args=["-fopenmp"],
    optional=True,
)

CONF_GROUPS = [f"binexp.conf.{name}" for name in find_namespace_packages(where="conf")]

setup(
    packages=find_packages(include=["binexp", "binexp.*"]) + ["binexp.conf", *CONF_GROUPS],
    package_dir={"binexp.conf": "conf"},
    package_data={"": ["*.yaml"]},
    ext_modules=[POPCOUNT],
)
