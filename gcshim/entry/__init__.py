"""The ways in: `import gcshim.auto`, `gcshim run`, `gcshim inspect`, `gcshim demo`, the
command line, and settings from GCSHIM_* environment variables."""
