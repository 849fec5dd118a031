"""The credential center: typed credentials, where they are kept, and who used them.

Holds the credential model (``model``), the SOPS file format implemented natively
(``sops``, with age through ``age``), parsing of ``credentials.sops.yaml`` documents
(``documents``), the AES-256-GCM store for credentials created outside Git
(``sealing``), the use audit (``auditing``), the ``CredentialManager`` through which
every other part of QUIC-Flow obtains a credential (``manager``), the resolving of a
run's secret refs to values and a Masker (``resolving``) and the ``quicflow secrets``
commands (``commands``). It sits below the engine and never imports it.

What it must not do: hand out a value without recording the use, let a project read
another project's credential, or put a secret value into a ``repr``, a ``str``, an
exception message or a log line.  Only ``age`` imports pyrage or runs the age CLI,
only ``sealing`` and ``auditing`` reach the operational store (through
``reconciler.store.credentials``), and only ``sops`` runs the ``sops`` binary.
"""
