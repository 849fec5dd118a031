"""Observing Kubernetes environments for drift, once per pass, before planning.

For each Kubernetes environment with a recorded release, its credential is resolved
(as a run would, each use audited) and the live objects are read in a thread
(``drivers.kubernetes.observing``). A cluster that cannot be read is logged and left
unobserved: drift detection never fails a pass, and never shows a credential.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from reconciler.credential.resolving import CredentialResolver
from reconciler.errors import QuicFlowError
from reconciler.gitops import model
from reconciler.gitops.planning import DeployedRecord, Observation

_log = logging.getLogger(__name__)


async def observe(
    desired: model.DesiredState,
    deployed: Mapping[tuple[str, str], DeployedRecord],
    credentials: CredentialResolver,
) -> list[Observation]:
    """Observations of every Kubernetes environment the state ref records a release of."""
    found: list[Observation] = []
    for env in desired.environments():
        record = deployed.get((env.project, env.name))
        if env.deploy.type is not model.DeployType.KUBERNETES or record is None:
            continue
        if record.version is None or not desired.settings.features.get("kubernetes", True):
            continue
        try:
            # Imported only when a Kubernetes environment is deployed: the kubernetes
            # client is an extra (``quicflow[kubernetes]``), not needed by anyone else.
            from reconciler.drivers.kubernetes import observing
        except ImportError as exc:
            _log.warning("cannot observe %s for drift: %s", env.key, missing_client(exc))
            continue
        try:
            values, _ = await credentials.resolve(env, desired)
            name = env.deploy.spec.get("kubeconfig_credential")
            value = values.get(f"{name}.") if name else None
            found.append(await asyncio.to_thread(observing.observe, env, value, record))
        except QuicFlowError as exc:
            _log.warning("cannot observe %s for drift: %s", env.key, exc)
    return found


def missing_client(exc: ImportError) -> str:
    """What to tell an operator whose install lacks the kubernetes client."""
    return f"the kubernetes client is not installed ({exc}); pip install 'quicflow[kubernetes]'"
