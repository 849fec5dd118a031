"""Authentication and project permissions.

Who may do what on a project: member roles (owner, maintainer, developer, viewer),
the permission matrix as data, and the checks against it. The permission logic is pure
— no I/O, no token store, no HTTP — so the API middleware, ``quicflow plan`` and the
engine's approval gates all ask the same question and get the same answer. Token
issuing and storage live beside it in their own modules and are the only I/O here.
"""
