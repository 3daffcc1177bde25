"""The `inmesh` command line: one entry point for every process and the lab."""
