"""Server-rendered pages of the portal."""
