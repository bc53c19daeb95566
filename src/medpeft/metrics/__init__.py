"""medpeft.metrics."""
