"""The HTTP service: CDS Hooks 2.0 endpoints, /evaluate, review pages."""
