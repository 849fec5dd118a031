"""The operational store: runs, steps, approvals, log lines and other fast-changing records.

SQLite by default (one file under the data dir, WAL mode, zero set-up). Components
reach it through small repositories (``RunStore``, ``LogStore``, …) whose SQL is plain
enough to move to PostgreSQL behind the same methods. Nothing here decides anything;
it stores and answers.
"""
