"""The in-browser console: tickets, the RFB protocol, the relay and the gateway."""
