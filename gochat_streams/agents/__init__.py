"""The logic service's agents, one concern per module."""
