"""medpeft.data."""
