"""The CLI half of every command (`add_arguments`, `run`), each named after its command;
the library code each calls stays in its package (the top of the layering)."""
