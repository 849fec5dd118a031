"""The HTTP side of the server: JSON API, Git webhooks, the read-only status page.

``app.create_app(engine, settings)`` builds one Starlette application with explicit
routes and a lifespan. Endpoints only translate HTTP into calls on
``reconciler.engine.control.EngineControl`` and back; who is asking is settled by the
authentication middleware (``auth``) before any endpoint runs, and what they may do is
the project permission matrix of ``reconciler.auth.permissions``.

What this package must not do: decide anything about releases (the engine does), change
configuration (Git does: the API is read-only except run actions and triggers), or show
a secret (everything it shows comes from masked stores, and webhook secrets are only
ever compared).
"""
