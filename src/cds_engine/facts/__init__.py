"""The patient fact model and the derivation of the flat facts rules read."""
