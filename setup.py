"""Package discovery (the metadata lives in pyproject.toml).

The design card keeps ``passes/`` and ``backends/`` at the top of the repository, but they install inside the
``graphopt`` namespace (``graphopt.passes``, ``graphopt.backends``), never as top-level packages. setuptools'
declarative ``packages.find`` cannot re-root a folder under another package's name, so the packages are
discovered here, folder by folder, instead of being listed by hand (a hand list once left out
``graphopt.search`` and the wheel could not be imported).
"""

from __future__ import annotations

from setuptools import find_packages, setup

#: Source folder -> the package name it installs as.
ROOTS = {"graphopt": "graphopt", "passes": "graphopt.passes", "backends": "graphopt.backends"}


def discovered() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for folder, name in ROOTS.items():
        package_dir[name] = folder
        packages.append(name)
        for sub in find_packages(where=folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


packages, package_dir = discovered()
setup(packages=packages, package_dir=package_dir)
