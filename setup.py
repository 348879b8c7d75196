"""Packaging glue that pyproject.toml cannot express: the top-level `kernels/` folder
is installed as the subpackage `memlab.kernels` (never as a top-level `kernels`)."""

from setuptools import find_packages, setup

kernel_packages = ["memlab.kernels"] + [f"memlab.kernels.{p}" for p in find_packages("kernels")]
setup(
    packages=find_packages("src") + kernel_packages,
    package_dir={"": "src", "memlab.kernels": "kernels"},
)
