"""Triggers: Git webhooks (GitHub, GitLab, Gitee) and cron schedules.

Deciding is kept apart from acting. The pure modules here verify a delivery's
signature from its headers and raw body (``signatures``), parse push and tag payloads
into one provider-neutral event (``pushes``) and match branch filters (``matching``);
they do no I/O and read no clock — ``now`` is a parameter. Recording deliveries,
de-duplicating them and starting runs belong to the server and the engine.
"""
