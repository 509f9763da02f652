"""Console transports: the Channels relay, the websockify gateway, the guest link and the
RFB protocol. The rules they apply live in vms.services.consoles."""
