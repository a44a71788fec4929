"""One plan per node: where the software under test lives on it and how its peers reach it.

Everything that touches a node's files or service (deploy, rollback, the plugin's log fetch and
probes, the loop's disk check and log collection, ``vpstest diagnose``) asks :func:`plan_node`,
so deploy and the readers of its results cannot disagree on a path.

The rules:

- install path: the node's ``install_path``, else the project's ``deploy.install_path``;
- log directory: the node's ``log_dir``, else ``<install path>/logs`` (the process manager writes
  ``<log dir>/<service>.log`` there);
- service: ``<deploy.service_prefix>-<first module>``, else ``<deploy.service_prefix>-<project>``;
- binary: ``<install path>/<name>``, the name being the first module's ``binary``, else the
  deployed artifact's file name, else ``build.artifact``'s file name, else the project name;
- a multi-file artifact (a directory or an archive, ``fleet/artifact.py``) is unpacked into
  ``<install path>/releases/<id>/`` with the symlink ``<install path>/current`` naming the installed
  one (``previous`` the one before): the binary is ``<install path>/current/<module's binary>``;
- p2p address: the node's ``p2p_address``, else its SSH host.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from pytest_vpstest.config import DeployConfig, ProjectConfig
from pytest_vpstest.fleet.artifact import BUNDLE_CURRENT, BUNDLE_PREVIOUS, is_bundle
from pytest_vpstest.inventory import Node, Role

__all__ = ["NodePlan", "binary_name", "install_path", "is_bundle_deploy", "plan_node", "service_name"]


@dataclass(frozen=True)
class NodePlan:
    """Where things are on one node, decided once by :func:`plan_node`."""

    node: str
    role: Role
    service: str
    install_path: str
    log_dir: str
    binary: str  # the installed artifact's absolute path ({bin})
    p2p_address: str
    bundle: bool = False  # a multi-file artifact: installed under releases/, named by ``current``

    @property
    def previous(self) -> str:
        """Where deploy keeps what it replaced (for rollback): ``<binary>.prev`` for a single file,
        the ``previous`` symlink for a bundle."""
        if self.bundle:
            return posixpath.join(self.install_path, BUNDLE_PREVIOUS)
        return self.binary + ".prev"

    @property
    def current(self) -> str:
        """The symlink naming the installed bundle (bundles only)."""
        return posixpath.join(self.install_path, BUNDLE_CURRENT)

    def placeholders(self) -> dict[str, str]:
        """The node's values of the command-template placeholders (``{bin}``, ``{log_dir}``, ...)."""
        return {
            "bin": self.binary,
            "node": self.node,
            "install_path": self.install_path,
            "log_dir": self.log_dir,
            "p2p_address": self.p2p_address,
            "role": self.role,
        }


def service_name(config: ProjectConfig) -> str:
    """``<service_prefix>-<module>`` (first module), or ``<service_prefix>-<project>``."""
    module = config.modules[0][0] if config.modules else config.project
    return f"{config.deploy.service_prefix}-{module}"


def binary_name(config: ProjectConfig, artifact: Path | str | None = None) -> str:
    """The installed binary's file name (see the module docstring for the order of the rules)."""
    if config.modules:
        return config.modules[0][1].binary
    if artifact is not None:
        return Path(artifact).name
    if config.build is not None and config.build.artifact:
        return posixpath.basename(config.build.artifact.rstrip("/"))
    return config.project


def install_path(node: Node, deploy: DeployConfig) -> str:
    """The node's install directory: its own ``install_path``, else the project's."""
    return node.install_path or deploy.install_path


def is_bundle_deploy(config: ProjectConfig, artifact: Path | str | None = None) -> bool:
    """Whether the deployed artifact is a directory or an archive: ``artifact`` when given, else
    ``build.artifact`` (by its name, else whether it is a directory in the workspace)."""
    if artifact is not None:
        return is_bundle(artifact)
    if config.build is not None and config.build.artifact:
        return is_bundle(config.build.artifact) or is_bundle(config.workspace / config.build.artifact)
    return False


def plan_node(node: Node, config: ProjectConfig, artifact: Path | str | None = None) -> NodePlan:
    """The plan of ``node`` under ``config``; ``artifact`` is the file deployed (when known)."""
    install = install_path(node, config.deploy)
    bundle = is_bundle_deploy(config, artifact)
    if bundle:
        binary = posixpath.join(install, BUNDLE_CURRENT, binary_name(config, artifact))
    else:
        binary = posixpath.join(install, binary_name(config, artifact))
    return NodePlan(
        node=node.name,
        role=node.role,
        service=service_name(config),
        install_path=install,
        log_dir=node.log_dir or posixpath.join(install, "logs"),
        binary=binary,
        p2p_address=node.p2p_address or node.host,
        bundle=bundle,
    )
