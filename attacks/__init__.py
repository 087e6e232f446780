"""Byzantine attacks. One module each; every attack implements :class:`attacks.base.Attack`."""
