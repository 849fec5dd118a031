"""Triggers: Git webhooks (GitHub, GitLab, Gitee) and cron schedules.

Deciding is kept apart from acting. The pure modules here verify a delivery's
signature from its headers and raw body (``signatures``), parse push and tag payloads
into one provider-neutral event (``pushes``); branch filters are
``reconciler.rules.branches``. They do no I/O and read no clock — ``now`` is a parameter. The two modules that act:
``deliveries`` takes one webhook delivery (trigger id, headers, body, source address,
``now``) through verification, delivery-id dedup and filters to the trigger's action on
the engine, records it, and answers a plain result; ``scheduling`` persists each
schedule's slots so a slot fires once across restarts and processes (its slot
arithmetic, ``due_slots``, stays pure).

What this package must not do: speak HTTP (no web framework: reading the request and
writing the response are ``reconciler.api.webhooks``'s job) or drive a run itself —
starting and running releases belong to the engine.
"""
