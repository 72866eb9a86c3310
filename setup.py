"""Everything else is in setup.cfg. The web page lives at the repository root (frontend_stub/), outside the
package tree, yet must ship in installed copies: it becomes the package `middlewared_plugin.frontend`, which
setup.cfg's `packages = find:` cannot name (it only finds directories under their own names)."""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["middlewared_plugin*"]), "middlewared_plugin.frontend"],
    package_dir={"middlewared_plugin.frontend": "frontend_stub"},
    package_data={"middlewared_plugin.frontend": ["**/*.html", "**/*.css", "**/*.js", "**/*.svg", "**/*.png"]},
)
