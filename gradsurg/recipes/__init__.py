"""Training programs that `recipes/*.yaml` name; each registers through an entry point."""
