"""Pool schema revisions, oldest first (0001 is the schema `create_all` used to make)."""
