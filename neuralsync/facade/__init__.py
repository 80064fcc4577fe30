"""The facade's doors by concern, mixed into ``UnifiedMemoryAPI`` (``unified_memory_api.py``)."""
