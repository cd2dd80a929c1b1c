"""The peer-to-peer layer: wire format, PeerProtocol, factory, peer manager, sync."""
