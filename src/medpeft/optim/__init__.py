"""medpeft.optim."""
