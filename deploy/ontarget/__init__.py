"""The target side: what runs on a Raspberry Pi or this machine to measure a model.

Imports numpy and the one runtime a model needs, nothing of the host side and no torch (an
``import-linter`` contract in ``pyproject.toml`` checks it). The SSH target copies this
package (with ``deploy/__init__.py``) to the device and runs ``python -m deploy.ontarget.agent``.
"""
