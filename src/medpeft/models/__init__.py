"""medpeft.models."""
