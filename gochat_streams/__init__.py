"""gochat-streams: the stream-processing core of the GoChat instant-messaging system."""

__version__ = "0.1.0"
