"""medpeft.engine."""
