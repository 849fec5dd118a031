"""Triggers: Git webhooks (GitHub, GitLab, Gitee) and cron schedules.

Deciding is kept apart from acting. The pure modules here verify a delivery's
signature from its headers and raw body (``signatures``), parse push and tag payloads
into one provider-neutral event (``pushes``) and match branch filters (``matching``);
they do no I/O and read no clock — ``now`` is a parameter. ``scheduling`` is the one
module here that touches the operational store: it persists each schedule's slots so
a slot fires once across restarts and processes; its slot arithmetic (``due_slots``)
stays pure. Recording webhook deliveries and starting runs belong to the server and
the engine.
"""
