"""Built-in sink plugins: ``live_sinks`` (virtual camera, OBS, MJPEG stream, preview, recorder,
delayed microphone) and ``vmc`` (VMC protocol over OSC for VTuber apps)."""
