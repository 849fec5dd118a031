"""Notifications: callbacks (webhook, Feishu), message templates, alert rules and digests.

What happens to an event, stage by stage, one module each:

- ``rules`` (pure) decides which alert rules an event matches, folds repeats of the same
  alert inside a window into one with a count, and says when a digest window is due;
- ``templates`` (Jinja2 sandbox, pure) renders the documented variables into message
  text, length-limited and with secrets masked;
- ``payloads`` (pure) builds the versioned webhook JSON and the Feishu custom-bot body;
- ``signing`` (pure) signs them (``X-QuicFlow-Signature-256``, Feishu ``timestamp`` +
  ``sign``);
- ``retries`` (pure) gives the verdict on a receiver's reply (retry, or give up);
- the values — alert records, outbox items, delivery attempts, the retry policy
  (exponential backoff with jitter) — live in the leaf module ``reconciler.notifications``
  and are kept by ``reconciler.store.alerts`` and ``reconciler.store.outbox``, so a
  restart loses nothing;
- ``delivering`` is the only module that does outbound HTTP (httpx);
- ``notifier`` ties them to the event bus and answers the alert API.

The pure modules must not do I/O, read the clock or draw random numbers: time and
randomness come in as parameters. Secrets are fetched by credential name at send time
and are never written to the store.
"""
