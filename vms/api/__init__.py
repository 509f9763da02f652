"""The REST API (DRF): the contract in DESIGN.md section 3."""
