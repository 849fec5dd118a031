"""The credential center: typed credentials, where they are kept, and who used them.

Holds the credential model (``model``), the SOPS file format implemented natively
(``sops``, with age through ``age``), parsing of ``credentials.sops.yaml`` documents
(``documents``), the AES-256-GCM store for credentials created outside Git
(``sealing``), the use audit (``auditing``), the ``CredentialManager`` through which
every other part of QUIC-Flow obtains a credential (``manager``) and the
``quicflow secrets`` commands (``commands``).

What it must not do: hand out a value without recording the use, let a project read
another project's credential, or put a secret value into a ``repr``, a ``str``, an
exception message or a log line.  Only ``age`` imports pyrage or runs the age CLI,
only ``database``, ``sealing`` and ``auditing`` touch SQLite, and only ``sops`` runs
the ``sops`` binary.
"""
