"""CLI command modules; each exposes ``register(app, rules_app)``."""
