"""Writes of the annotation app. Views and the API call these; nothing else changes queue state."""
