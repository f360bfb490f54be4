"""Batch screening of patient populations."""
