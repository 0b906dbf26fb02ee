"""The pure core: no IO, no asyncio, no clock reads. Time is always an argument."""
