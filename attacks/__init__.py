"""Byzantine attacks, one module each; every attack implements :class:`robustfl.contracts.Attack`."""
