"""What a node keeps on disk: SQLite state and the spool of bundle files."""
