"""textback: texts back the callers an office did not answer."""
