"""The REST API (DRF): the contract in docs/architecture.md, section 3."""
