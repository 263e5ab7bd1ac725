"""Pipeline assembly and the imgclass command line."""
