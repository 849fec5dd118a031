"""The HTTP side of the server: JSON API, Git webhooks, the read-only status page.

``app.create_app(engine, settings)`` builds one Starlette application with explicit
routes and a lifespan. Endpoints only translate HTTP into calls on
``reconciler.engine.control.EngineControl`` and back; who is asking is settled by the
authentication middleware (``auth``) before any endpoint runs, and what they may do is
the project permission matrix of ``reconciler.auth.permissions``.

Modules: ``routes`` (the JSON API), ``webhooks`` (reads a delivery and answers what
``reconciler.trigger.deliveries`` made of it), ``builds``, ``operations``, ``pages``
(the status page), and ``views`` — the HTTP-free view builders that the API and the page
share. Live streams are the generators of ``reconciler.streaming``; ``routes`` only wraps
them in a response.

What this package must not do: decide anything about releases (the engine does) or about
a webhook delivery (the trigger package does), change
configuration (Git does: the API is read-only except run actions and triggers), or show
a secret (everything it shows comes from masked stores, and webhook secrets are only
ever compared).
"""
