"""medpeft.adapters."""
