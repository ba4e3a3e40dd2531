"""Several head nodes on one store: who leads the work that must happen once."""
