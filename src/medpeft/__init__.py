"""medpeft: parameter-efficient adaptation of vision foundation models to medical images."""

__version__ = "0.1.0"
