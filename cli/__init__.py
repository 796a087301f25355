"""The `bmamba` command line; see app.py."""
