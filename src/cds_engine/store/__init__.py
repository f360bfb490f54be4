"""Persistence of evaluations, alerts, feedback and the audit log."""
