"""Adapters that turn FHIR resources, tables and JSON into PatientFacts."""
