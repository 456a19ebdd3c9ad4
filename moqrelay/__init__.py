"""moqrelay: a Media over QUIC relay on Twisted."""

__version__ = "0.1.0"
