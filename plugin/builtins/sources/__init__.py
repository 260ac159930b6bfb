"""Built-in source plugins: ``files`` (audio and video files) and ``live_sources`` (microphone,
system loopback, screen or window capture, webcam)."""
