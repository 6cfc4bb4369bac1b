"""Following PyPI: its changelog and journal, its JSON and Simple APIs, and
what they say about releases."""
