"""The steps flows are built from, grouped by the system they touch."""
