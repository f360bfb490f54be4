"""Schema versions, oldest first; each file is frozen once released."""
