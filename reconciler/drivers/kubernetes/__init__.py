"""The ``kubernetes`` deploy type: Deployments and Services on a cluster, by server-side apply.

The driver talks to the Kubernetes API server from the reconciler, not through an
agent: the API server is already a remote, authenticated, TLS endpoint made for this,
so an agent in the cluster would add a hop and a second credential without adding
reach. Only ``api`` imports the ``kubernetes`` client library; ``specs``, ``clusters``,
``manifests``, ``overlays`` (the user's manifests with patches), ``rollouts``, ``drift``
and ``describing`` are pure (no I/O), and ``driving`` (the driver's steps) and
``observing`` (live state for drift) call the API from a thread. Nothing here logs or raises a kubeconfig, a token or a Secret's value.
"""

#: The field manager of every apply: drift and ownership are judged on its fields only.
FIELD_MANAGER = "quicflow"
