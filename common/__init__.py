"""Code shared by the master and the builder: configuration, schema, names, messages."""
